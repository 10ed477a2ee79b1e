//! MLS interaction fuzz against a real node, honestly counted. Members send,
//! self-update (sometimes two at once, racing for the same epoch) and catch up
//! at random, while their inboxes are disturbed: envelopes taken out, shuffled
//! and put back, some twice, and some application messages never put back
//! (dropped). The test tags every envelope with the message inside it as it
//! arrives, so it knows what each member was sent, what was duplicated and what
//! was dropped.
//!
//! Invariants: every member ends on the same epoch authenticator (no fork); no
//! message is shown twice, nor anything never sent; and every message sent to a
//! member is accounted for exactly: shown once, or dropped by the test (the
//! member never had it), or reported to the member as unreadable, with its
//! sender and a reason, one report per message (a duplicate is not reported).
//! Seeded: a failure names its seed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use quicnprotochat_client::SessionHandle;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{Person, Rng, TestNode, local};
use quicnprotochat_wire::{Envelope, IdentityKey, Inbound};

/// What the test knows of every envelope it saw: which application message
/// it carries (by recipient and body), what it dropped, what it duplicated.
#[derive(Default)]
struct Ledger {
    /// (recipient, body digest) → the text inside, for application messages;
    /// `None` for everything else (commits, welcomes, receipts).
    tags: HashMap<(usize, u64), Option<String>>,
    /// Who sent what.
    sent: Vec<(usize, String)>,
    /// (recipient, text) taken out of the recipient's inbox for good.
    dropped: BTreeSet<(usize, String)>,
    duplicated: usize,
}

fn body_digest(e: &Envelope) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match e.inbound().unwrap() {
        Inbound::Direct(d) => (0u8, d).hash(&mut h),
        Inbound::Shared { body, .. } => (1u8, body).hash(&mut h),
        Inbound::Missed(_) => unreachable!("no inbox fills up here"),
    }
    h.finish()
}

impl Ledger {
    /// Tags every envelope now in any inbox that was not seen before with
    /// `text` (the message just sent) or, after anything else, as no message.
    async fn tag_new(
        &mut self,
        raws: &[(quicnprotochat_client::NodeConnection, SessionHandle)],
        text: Option<&str>,
    ) {
        for (r, (_, raw)) in raws.iter().enumerate() {
            for e in raw.fetch(0, 0).await.unwrap() {
                self.tags
                    .entry((r, body_digest(&e)))
                    .or_insert_with(|| text.map(str::to_string));
            }
        }
    }
}

/// Takes everything out of `member`'s inbox and puts it back shuffled, each
/// envelope once or (sometimes) twice, except some application messages, which
/// are dropped.
#[allow(clippy::too_many_arguments)]
async fn disturb(
    raw: &SessionHandle,
    helper: &SessionHandle,
    gid: &[u8],
    member: &Person,
    victim: usize,
    ledger: &mut Ledger,
    rng: &mut Rng,
) {
    let envs = take_out(raw).await;
    let text_of = |e: &Envelope| {
        ledger
            .tags
            .get(&(victim, body_digest(e)))
            .cloned()
            .flatten()
    };
    // A message is dropped whole: every copy of it in the inbox, or none.
    let mut drop = BTreeSet::new();
    for text in envs.iter().filter_map(text_of) {
        if !drop.contains(&text) && rng.below(6) == 0 {
            drop.insert(text);
        }
    }
    let mut kept: Vec<Envelope> = Vec::new();
    for e in envs {
        if text_of(&e).is_some_and(|t| drop.contains(&t)) {
            continue;
        }
        if rng.below(4) == 0 {
            ledger.duplicated += 1;
            kept.push(e.clone());
        }
        kept.push(e);
    }
    for text in drop {
        ledger.dropped.insert((victim, text));
    }
    for i in (1..kept.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        kept.swap(i, j);
    }
    put_back(raw, helper, gid, member, kept).await;
}

/// Everything in the inbox of `raw`'s device, acked (gone from the node).
async fn take_out(raw: &SessionHandle) -> Vec<Envelope> {
    let envs = raw.fetch(0, 0).await.unwrap();
    if let Some(last) = envs.last() {
        raw.ack(last.seq).await.unwrap();
    }
    envs
}

/// Puts `envs` into `member`'s inbox, in this order. Group traffic is shared
/// bodies, which only a member can put in an inbox: `helper` (another member)
/// does, through the group's fan-out, with the member's own part.
async fn put_back(
    raw: &SessionHandle,
    helper: &SessionHandle,
    gid: &[u8],
    member: &Person,
    envs: Vec<Envelope>,
) {
    let me = IdentityKey(member.identity.public_key());
    for e in envs {
        match e.inbound().unwrap() {
            Inbound::Direct(data) => {
                raw.enqueue(&me, data).await.unwrap();
            }
            Inbound::Shared { part, body } => {
                let sent = helper
                    .send_group(gid, body, &[(me, part.to_vec())])
                    .await
                    .unwrap();
                assert!(sent[0].outcome.is_ok());
            }
            Inbound::Missed(_) => unreachable!("no inbox fills up here"),
        }
    }
}

async fn shown_lines(p: &mut Person) -> Vec<String> {
    p.messenger.pull(Duration::ZERO).await.unwrap();
    let unread = p.messenger.unread().unwrap();
    let keys: Vec<_> = unread.iter().map(|(k, _)| *k).collect();
    p.messenger.mark_shown(&keys).unwrap();
    unread.into_iter().map(|(_, l)| l.display()).collect()
}

/// What one run counted, over all members.
#[derive(Debug, Default)]
struct Counts {
    sent: usize,
    shown: usize,
    dropped: usize,
    reported: usize,
    duplicated: usize,
    commits: usize,
    racing_commits: usize,
}

async fn run(seed: u64) -> Counts {
    const MEMBERS: usize = 4;
    const ROUNDS: usize = 48;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let counts = local(async {
        let mut rng = Rng::new(seed);
        let mut counts = Counts::default();
        let mut people = Vec::new();
        for i in 0..MEMBERS {
            people.push(node.person(&format!("fuzz{i}")).await);
        }
        let names: Vec<String> = people[1..]
            .iter()
            .map(|p| p.messenger.username().to_string())
            .collect();
        people[0]
            .messenger
            .create_group("f", Suite::Classic)
            .await
            .unwrap();
        people[0].messenger.invite("f", &names).await.unwrap();
        let gid = people[0].messenger.group("f").await.unwrap().group_id;
        // A raw session per member: the test's hand in its inbox.
        let mut raws = Vec::new();
        for p in &people {
            raws.push(raw_session(&node, p).await);
        }
        let mut ledger = Ledger::default();
        ledger.tag_new(&raws, None).await;
        let mut shown: Vec<Vec<String>> = vec![Vec::new(); MEMBERS];
        for (i, p) in people.iter_mut().enumerate().skip(1) {
            shown[i].extend(shown_lines(p).await);
        }
        for round in 0..ROUNDS {
            let who = rng.below(MEMBERS as u64) as usize;
            match rng.below(14) {
                0..=6 => {
                    let text = format!("r{round} from {who}");
                    people[who].messenger.send("f", &text).await.unwrap();
                    ledger.tag_new(&raws, Some(&text)).await;
                    ledger.sent.push((who, text));
                }
                7 | 8 => {
                    people[who].messenger.update("f").await.unwrap();
                    counts.commits += 1;
                    ledger.tag_new(&raws, None).await;
                }
                9 => {
                    // Two members commit at the same epoch at once: one wins,
                    // the other's commit is retried on top of it.
                    let other = (who + 1 + rng.below(MEMBERS as u64 - 1) as usize) % MEMBERS;
                    let (lo, hi) = (who.min(other), who.max(other));
                    let (left, right) = people.split_at_mut(hi);
                    let (a, b) = futures::join!(
                        left[lo].messenger.update("f"),
                        right[0].messenger.update("f")
                    );
                    a.unwrap();
                    b.unwrap();
                    counts.commits += 2;
                    counts.racing_commits += 2;
                    ledger.tag_new(&raws, None).await;
                }
                _ => {
                    let victim = rng.below(MEMBERS as u64) as usize;
                    let helper = (victim + 1) % MEMBERS;
                    disturb(
                        &raws[victim].1,
                        &raws[helper].1,
                        &gid,
                        &people[victim],
                        victim,
                        &mut ledger,
                        &mut rng,
                    )
                    .await;
                }
            }
            // Someone catches up now and then.
            let reader = rng.below(MEMBERS as u64) as usize;
            shown[reader].extend(shown_lines(&mut people[reader]).await);
        }
        for (i, p) in people.iter_mut().enumerate() {
            shown[i].extend(shown_lines(p).await);
        }

        let mut views = Vec::new();
        for p in &people {
            views.push(p.messenger.group("f").await.unwrap());
        }
        for v in &views {
            assert_eq!(
                (v.epoch, &v.epoch_authenticator),
                (views[0].epoch, &views[0].epoch_authenticator),
                "seed {seed}: no fork"
            );
        }
        counts.duplicated = ledger.duplicated;
        for (i, lines) in shown.iter().enumerate() {
            let c = account(seed, i, lines, &ledger);
            counts.sent += c.sent;
            counts.shown += c.shown;
            counts.dropped += c.dropped;
            counts.reported += c.reported;
        }
        counts
    })
    .await;
    node.stop().await;
    counts
}

/// Member `i`'s lines against what it was sent: each message shown once,
/// dropped by the test, or reported with its sender; nothing else shown.
fn account(seed: u64, i: usize, lines: &[String], ledger: &Ledger) -> Counts {
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.starts_with("[f] fuzz")) {
        let (_, text) = l.split_once(": ").expect("sender: text");
        *shown.entry(text).or_default() += 1;
    }
    let notices: Vec<&String> = lines.iter().filter(|l| l.starts_with("[f] * ")).collect();
    let mut counts = Counts::default();
    let to_me: Vec<&(usize, String)> = ledger.sent.iter().filter(|(from, _)| *from != i).collect();
    for (text, n) in &shown {
        assert_eq!(
            *n, 1,
            "seed {seed}: member {i} was shown {text:?} {n} times"
        );
        assert!(
            to_me.iter().any(|(_, t)| t == text),
            "seed {seed}: member {i} was shown {text:?}, never sent to it"
        );
    }
    for s in 0..4usize {
        if s == i {
            continue;
        }
        let from_s: Vec<&String> = to_me
            .iter()
            .filter(|(from, _)| *from == s)
            .map(|(_, t)| t)
            .collect();
        let got = from_s
            .iter()
            .filter(|t| shown.contains_key(t.as_str()))
            .count();
        let dropped = from_s
            .iter()
            .filter(|t| ledger.dropped.contains(&(i, t.to_string())))
            .count();
        for t in &from_s {
            assert!(
                !(shown.contains_key(t.as_str()) && ledger.dropped.contains(&(i, t.to_string()))),
                "seed {seed}: member {i} was shown {t:?}, which the test dropped"
            );
        }
        // A report names its sender and says why (see the group actor's notices).
        let reported = notices
            .iter()
            .filter(|l| l.contains(&format!("message from fuzz{s} ")))
            .count();
        assert_eq!(
            got + dropped + reported,
            from_s.len(),
            "seed {seed}: member {i}, messages from fuzz{s}: {got} shown + {dropped} dropped + \
             {reported} reported != {} sent\n{lines:#?}",
            from_s.len()
        );
        counts.sent += from_s.len();
        counts.shown += got;
        counts.dropped += dropped;
        counts.reported += reported;
    }
    // Every notice about a message is one of those counted: none is anonymous.
    let about_messages = notices.iter().filter(|l| l.contains("message")).count();
    assert_eq!(
        about_messages, counts.reported,
        "seed {seed}: member {i} has notices about messages that name no sender: {notices:#?}"
    );
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_shown_once_dropped_or_reported_under_reorder_duplication_drops_and_racing_commits()
 {
    // QPC_MLS_FUZZ_SEED=N replays one run; QPC_MLS_FUZZ_SEEDS=N runs seeds 1..=N.
    let seeds: Vec<u64> = match (
        std::env::var("QPC_MLS_FUZZ_SEED"),
        std::env::var("QPC_MLS_FUZZ_SEEDS"),
    ) {
        (Ok(s), _) => vec![s.parse().expect("a number")],
        (_, Ok(n)) => (1..=n.parse().expect("a number")).collect(),
        _ => vec![1, 7, 42, 2026],
    };
    let mut total = Counts::default();
    for seed in seeds {
        let c = run(seed).await;
        total.sent += c.sent;
        total.shown += c.shown;
        total.dropped += c.dropped;
        total.reported += c.reported;
        total.duplicated += c.duplicated;
        total.commits += c.commits;
        total.racing_commits += c.racing_commits;
    }
    eprintln!("{total:?}");
    assert!(total.dropped > 0 && total.duplicated > 0 && total.racing_commits > 0);
}

/// A raw session of `p`'s device: the test's hand in its inbox.
async fn raw_session(
    node: &TestNode,
    p: &Person,
) -> (quicnprotochat_client::NodeConnection, SessionHandle) {
    let conn = node.connect().await.unwrap();
    let s = conn
        .login(
            p.messenger.username(),
            p.password.as_bytes(),
            &p.identity,
            None,
        )
        .await
        .unwrap()
        .session;
    (conn, s)
}

/// alice and bob in group "g", with the test's hand in bob's inbox, and alice's
/// session to put group traffic back into it.
struct Pair {
    alice: Person,
    bob: Person,
    gid: Vec<u8>,
    bob_raw: (quicnprotochat_client::NodeConnection, SessionHandle),
    alice_raw: (quicnprotochat_client::NodeConnection, SessionHandle),
}

impl Pair {
    async fn in_g(node: &TestNode) -> Pair {
        let (alice, bob) = quicnprotochat_tests::alice_and_bob_in_g(node).await;
        let gid = alice.messenger.group("g").await.unwrap().group_id;
        let bob_raw = raw_session(node, &bob).await;
        let alice_raw = raw_session(node, &alice).await;
        Pair {
            alice,
            bob,
            gid,
            bob_raw,
            alice_raw,
        }
    }
}

/// Runs `test` against a fresh node with alice and bob in group "g".
async fn with_pair<F, Fut>(test: F)
where
    F: FnOnce(Pair) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async { test(Pair::in_g(&node).await).await }).await;
    node.stop().await;
}

/// Notices (lines of the client's own, not messages) of `lines`.
fn notices(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.starts_with("[g] * ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_group_message_is_ignored_not_shown_twice_nor_reported() {
    with_pair(|pair| async move {
        let Pair {
            mut alice,
            mut bob,
            gid,
            bob_raw: (_c1, bob_raw),
            alice_raw: (_c2, alice_raw),
        } = pair;
        alice.messenger.send("g", "once").await.unwrap();
        // Stored twice (as a sender's retry after a lost answer would be).
        let envs = take_out(&bob_raw).await;
        let twice: Vec<Envelope> = envs.iter().chain(&envs).cloned().collect();
        put_back(&bob_raw, &alice_raw, &gid, &bob, twice.clone()).await;
        let lines = shown_lines(&mut bob).await;
        assert_eq!(lines, vec!["[g] alice: once".to_string()], "{lines:?}");
        // Replayed again after the group moved on: still not "too late".
        alice.messenger.update("g").await.unwrap();
        shown_lines(&mut bob).await;
        put_back(&bob_raw, &alice_raw, &gid, &bob, envs).await;
        let lines = shown_lines(&mut bob).await;
        assert!(lines.is_empty(), "{lines:?}");
        quicnprotochat_tests::assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_arriving_in_reverse_are_each_applied_once_without_a_too_late_notice() {
    with_pair(|pair| async move {
        let Pair {
            mut alice,
            mut bob,
            gid,
            bob_raw: (_c1, bob_raw),
            alice_raw: (_c2, alice_raw),
        } = pair;
        for _ in 0..3 {
            alice.messenger.update("g").await.unwrap();
        }
        // The three commits, last first: each waits for the one before it, and
        // the first to apply releases the others in turn.
        let mut envs = take_out(&bob_raw).await;
        envs.reverse();
        put_back(&bob_raw, &alice_raw, &gid, &bob, envs).await;
        let lines = shown_lines(&mut bob).await;
        let notes = notices(&lines);
        assert_eq!(notes.len(), 3, "one line per commit: {lines:?}");
        assert!(
            notes.iter().all(|l| l.contains("updated their keys")),
            "{lines:?}"
        );
        quicnprotochat_tests::assert_no_fork(&[&alice, &bob], "g").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_for_its_commit_is_shown_and_kept_in_history_once_released() {
    with_pair(|pair| async move {
        let Pair {
            mut alice,
            mut bob,
            gid,
            bob_raw: (_c1, bob_raw),
            alice_raw: (_c2, alice_raw),
        } = pair;
        alice.messenger.update("g").await.unwrap();
        alice.messenger.send("g", "later").await.unwrap();
        // The message first, then the commit it needs.
        let mut envs = take_out(&bob_raw).await;
        envs.reverse();
        put_back(&bob_raw, &alice_raw, &gid, &bob, envs).await;
        let lines = shown_lines(&mut bob).await;
        assert!(lines.contains(&"[g] alice: later".to_string()), "{lines:?}");
        let kept: Vec<(String, String)> = bob
            .messenger
            .history("g", 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.sender, e.text))
            .collect();
        assert_eq!(kept, vec![("alice".to_string(), "later".to_string())]);
        let sent: Vec<String> = alice
            .messenger
            .history("g", 10)
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(sent, vec!["later"]);
    })
    .await;
}
