//! MLS interaction fuzz against a real node: members send and self-update at
//! random while their inboxes are disturbed — envelopes taken out, shuffled and
//! put back, some twice. Invariants: every member ends on the same epoch
//! authenticator (no fork); no message is shown twice; every message another
//! member sent is either shown or reported as unreadable — never silently lost.
//! Seeded: a failure names its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quicnprotochat::client::SessionHandle;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_tests::{Person, TestNode, local};
use quicnprotochat_wire::{Envelope, IdentityKey, Inbound};

/// A small deterministic generator (xorshift64*), so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Takes everything out of `member`'s inbox and puts it back shuffled, each
/// envelope once or (sometimes) twice. Group traffic is shared bodies, which
/// only a member can put in an inbox: `helper` (another member) does, through
/// the group's fan-out, with the victim's own part.
async fn disturb(
    raw: &SessionHandle,
    helper: &SessionHandle,
    gid: &[u8],
    member: &Person,
    rng: &mut Rng,
) {
    let envs = raw.fetch(0, 0).await.unwrap();
    let Some(last) = envs.last() else { return };
    raw.ack(last.seq).await.unwrap();
    let mut kept: Vec<Envelope> = Vec::new();
    for e in envs {
        if rng.below(4) == 0 {
            kept.push(e.clone());
        }
        kept.push(e);
    }
    for i in (1..kept.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        kept.swap(i, j);
    }
    let me = IdentityKey(member.identity.public_key());
    for e in kept {
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
    unread.into_iter().map(|(_, l)| l).collect()
}

async fn run(seed: u64) {
    const MEMBERS: usize = 4;
    const ROUNDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    local(async {
        let mut rng = Rng(seed | 1);
        let mut people = Vec::new();
        for i in 0..MEMBERS {
            people.push(node.person(&format!("fuzz{i}")).await);
        }
        let names: Vec<String> = people[1..]
            .iter()
            .map(|p| p.messenger.username().to_string())
            .collect();
        people[0].messenger.create_group("f", Suite::Classic).await.unwrap();
        people[0].messenger.invite("f", &names).await.unwrap();
        let gid = people[0].messenger.group("f").await.unwrap().group_id;
        // A raw session per member: the test's hand in its inbox.
        let mut raws = Vec::new();
        for p in &people {
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
            raws.push((conn, s));
        }
        let mut shown: Vec<Vec<String>> = vec![Vec::new(); MEMBERS];
        for (i, p) in people.iter_mut().enumerate().skip(1) {
            shown[i].extend(shown_lines(p).await);
        }
        let mut sent: Vec<(usize, String)> = Vec::new();
        for round in 0..ROUNDS {
            let who = rng.below(MEMBERS as u64) as usize;
            match rng.below(10) {
                0..=6 => {
                    let text = format!("r{round} from {who}");
                    people[who].messenger.send("f", &text).await.unwrap();
                    sent.push((who, text));
                }
                7 | 8 => {
                    people[who].messenger.update("f").await.unwrap();
                }
                _ => {
                    let victim = rng.below(MEMBERS as u64) as usize;
                    let helper = (victim + 1) % MEMBERS;
                    disturb(
                        &raws[victim].1,
                        &raws[helper].1,
                        &gid,
                        &people[victim],
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
        for (i, lines) in shown.iter().enumerate() {
            let messages: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with("[f] fuzz") && !l.starts_with("[f] * "))
                .collect();
            let distinct: BTreeSet<&&String> = messages.iter().collect();
            assert_eq!(
                distinct.len(),
                messages.len(),
                "seed {seed}: member {i} was shown a message twice: {messages:?}"
            );
            let unreadable = lines
                .iter()
                .filter(|l| l.contains("arrived too late") || l.contains("was rejected"))
                .count();
            let expected: BTreeMap<&str, ()> = sent
                .iter()
                .filter(|(from, _)| *from != i)
                .map(|(_, t)| (t.as_str(), ()))
                .collect();
            let got = messages
                .iter()
                .filter(|l| expected.keys().any(|t| l.ends_with(&format!(": {t}"))))
                .count();
            assert_eq!(
                got,
                messages.len(),
                "seed {seed}: member {i} shown something never sent: {messages:?}"
            );
            assert!(
                got + unreadable >= expected.len(),
                "seed {seed}: member {i} lost messages silently: {got} shown, {unreadable} reported, {} sent\n{lines:#?}",
                expected.len()
            );
        }
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_converge_and_lose_nothing_silently_under_reorder_and_duplication() {
    for seed in [1u64, 7, 42, 2026] {
        run(seed).await;
    }
}
