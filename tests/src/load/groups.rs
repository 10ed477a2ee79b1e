//! `groups`: real MLS clients (the client's Messenger: MLS, X-Wing sealing, redb
//! profile, fsync) in one group on the target node. Measures the time from one
//! member sending until every other member has decrypted, and the cost of one
//! add-member commit fanned out and processed by every member, next to what
//! OpenMLS alone (in memory, no network, no sealing, no disk) spends on the same
//! operations.
//!
//! All clients run on the calling thread, one after another, through one shared
//! QUIC endpoint (each client's session actor still has a thread of its own):
//! the figures are the sum of every member's work, as one machine pays it.

use std::time::{Duration, Instant};

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::mls::{GroupMember, Suite};

use super::report::{Latency, histogram, record};
use super::scenarios::{connect, progress, run_local};
use super::sys::rss_bytes;
use super::{Report, Target};
use crate::Person;

/// Invitees per round while the group is built (the Messenger splits a round into
/// several commits when its Welcomes would not fit in one call).
const INVITE_CHUNK: usize = 100;

#[derive(Debug, Clone)]
/// How large a group the `groups` scenario builds and how many messages go through it.
pub struct GroupParams {
    /// Members of the group, the creator included.
    pub members: usize,
    /// Messages sent (by members in turn) and decrypted by all the others.
    pub messages: usize,
    /// The group's MLS ciphersuite.
    pub suite: Suite,
}

impl Default for GroupParams {
    fn default() -> Self {
        GroupParams {
            members: 20,
            messages: 50,
            suite: Suite::PostQuantum,
        }
    }
}

/// Page cache of each simulated member's profile: one process holds them all
/// (a real client holds one, with the default 16 MiB).
const MEMBER_CACHE_BYTES: usize = 1024 * 1024;

/// Bytes the node keeps per recipient of a shared body besides its part: the
/// `inbox_idx` entry, key (inbox 32 + seq 8) and value (log key 8).
const NODE_BYTES_PER_REFERENCE: usize = 48;

/// Every member except `skip` applies its inbox.
async fn all_pull(people: &mut [Person], skip: usize) -> anyhow::Result<()> {
    for (i, p) in people.iter_mut().enumerate() {
        if i != skip {
            p.messenger.pull(Duration::ZERO).await?;
            clear_unread(p)?;
        }
    }
    Ok(())
}

/// The harness reads no lines: drop them so the profiles do not grow.
fn clear_unread(p: &Person) -> anyhow::Result<()> {
    let keys: Vec<_> = p.messenger.unread()?.into_iter().map(|(k, _)| k).collect();
    p.messenger.mark_shown(&keys)?;
    Ok(())
}

/// `groups`: real MLS clients in one group: send-to-all-decrypted latency, and one add-member commit processed by all, next to OpenMLS' own cost.
pub fn groups(target: &Target, p: &GroupParams, show_progress: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(p.members >= 2, "a group needs at least 2 members");
    let mut report = Report::new("groups")
        .param("members", p.members)
        .param("messages", p.messages)
        .param("suite", format!("{:?}", p.suite));
    let tag = hex_tag();
    let errors = super::report::Failures::default();
    let mut one_message = (0usize, None::<u64>);
    // The members' shared endpoint is driven on a runtime of its own: driven by
    // the harness thread, which is busy for seconds with one member's MLS work
    // at a time, every other member's connection would go quiet and time out.
    let network = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("qpc-client-net")
        .enable_all()
        .build()?;
    let pinned = quicnprotochat_wire::tls::read_pinned_cert(&target.ca_cert)?;
    let endpoint =
        network.block_on(async { quicnprotochat_client::client_endpoint(target.addr, pinned) })?;
    let (send_hist, decrypts_per_s, add_ours, build, rss) = run_local(async {
        let bar = progress(show_progress, p.members as u64 + 1, "register");
        let mut address = target.address()?;
        address.endpoint = Some(endpoint.clone());
        let mut people = Vec::with_capacity(p.members + 1);
        for i in 0..=p.members {
            let conn = connect(target).await?;
            let name = format!("g{tag}m{i}");
            people.push(
                Person::enroll_with_cache(conn, address.clone(), &name, MEMBER_CACHE_BYTES).await?,
            );
            bar.inc(1);
        }
        bar.finish_and_clear();
        let newcomer = people.pop().expect("one extra person");
        let names: Vec<String> = people[1..]
            .iter()
            .map(|m| m.messenger.username().to_string())
            .collect();

        let built = Instant::now();
        people[0].messenger.create_group("load", p.suite).await?;
        let bar = progress(show_progress, names.len() as u64, "build group");
        for chunk in names.chunks(INVITE_CHUNK) {
            people[0].messenger.invite("load", chunk).await?;
            all_pull(&mut people, 0).await?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let build = built.elapsed();
        let rss = rss_bytes();

        // One 1 KiB message: what its sender uploads and what the node stores.
        let stored_before = shared_bodies(target).await?;
        let sent = people[0].messenger.send("load", &"x".repeat(1024)).await?;
        for (who, why) in &sent.undelivered {
            errors.note(format_args!("{who}: {why}"));
        }
        let stored_after = shared_bodies(target).await?;
        let node_bytes = stored_before.zip(stored_after).map(|((_, b0), (_, b1))| {
            b1.saturating_sub(b0) + (sent.seqs.len() * NODE_BYTES_PER_REFERENCE) as u64
        });
        one_message = (sent.upload_bytes, node_bytes);
        all_pull(&mut people, 0).await?;

        // Messages: send, then every other member decrypts.
        let mut send_hist = histogram();
        let bar = progress(show_progress, p.messages as u64, "messages");
        let started = Instant::now();
        for k in 0..p.messages {
            let sender = k % people.len();
            let t = Instant::now();
            let sent = people[sender]
                .messenger
                .send("load", &format!("message {k}"))
                .await?;
            for (who, why) in &sent.undelivered {
                errors.note(format_args!("{who}: {why}"));
            }
            all_pull(&mut people, sender).await?;
            record(&mut send_hist, t.elapsed());
            bar.inc(1);
        }
        bar.finish_and_clear();
        let decrypts = (p.messages * (people.len() - 1)) as f64;
        let decrypts_per_s = decrypts / started.elapsed().as_secs_f64().max(1e-9);

        // One add-member commit, fanned out and processed by every member, and
        // the newcomer's join.
        let name = newcomer.messenger.username().to_string();
        people.push(newcomer);
        let newcomer_index = people.len() - 1;
        let t = Instant::now();
        people[0].messenger.invite("load", &[name]).await?;
        all_pull(&mut people, 0).await?;
        let add_ours = t.elapsed();
        anyhow::ensure!(
            people[newcomer_index]
                .messenger
                .group("load")
                .await?
                .members
                .len()
                == people.len(),
            "the newcomer did not join"
        );
        let mut epochs: Vec<Vec<u8>> = Vec::new();
        for m in &people {
            epochs.push(m.messenger.group("load").await?.epoch_authenticator);
        }
        anyhow::ensure!(
            epochs.windows(2).all(|w| w[0] == w[1]),
            "members disagree on the group state"
        );
        anyhow::Ok((send_hist, decrypts_per_s, add_ours, build, rss))
    })?;
    let add_openmls = openmls_add_member_cost(p.members, p.suite)?;
    report.figure("build_group_s", build.as_secs_f64());
    report.figure("upload_bytes_per_message", one_message.0 as f64);
    if let Some(bytes) = one_message.1 {
        report.figure("node_bytes_per_message", bytes as f64);
    }
    errors.write_to(&mut report);
    // Node and every member client share this process.
    report.figure(
        "process_rss_kib_per_member",
        rss as f64 / 1024.0 / p.members as f64,
    );
    report.figure("member_decrypts_per_s", decrypts_per_s);
    report.figure("add_member_all_processed_ms", add_ours.as_secs_f64() * 1e3);
    report.figure(
        "add_member_openmls_only_ms",
        add_openmls.as_secs_f64() * 1e3,
    );
    report.figure(
        "add_member_ratio_to_openmls",
        add_ours.as_secs_f64() / add_openmls.as_secs_f64().max(1e-9),
    );
    report.latency = Some(Latency::of(&send_hist));
    Ok(report)
}

/// What OpenMLS itself spends, in memory, to add one member to a group of
/// `members`: the commit and Welcome, every member processing the commit, and the
/// newcomer joining.
fn openmls_add_member_cost(members: usize, suite: Suite) -> anyhow::Result<Duration> {
    let mk = || -> anyhow::Result<GroupMember<MemoryStorage>> {
        Ok(GroupMember::new(
            &Identity::generate(),
            MemoryStorage::default(),
        )?)
    };
    let creator = mk()?;
    let mut group = creator.create_group(suite, "baseline")?;
    let others: Vec<GroupMember<MemoryStorage>> =
        (1..members).map(|_| mk()).collect::<Result<_, _>>()?;
    let kps: Vec<Vec<u8>> = others
        .iter()
        .map(|m| m.generate_key_package(suite, false))
        .collect::<Result<_, _>>()?;
    let out = group.add_members(&creator, &kps)?;
    group.confirm_commit(&creator)?;
    let welcome = out.welcome.expect("a Welcome for added members");
    let mut groups = others
        .iter()
        .map(|m| m.join(&welcome))
        .collect::<Result<Vec<_>, _>>()?;

    let newcomer = mk()?;
    let kp = newcomer.generate_key_package(suite, false)?;
    let t = Instant::now();
    let out = group.add_members(&creator, &[kp])?;
    group.confirm_commit(&creator)?;
    for (m, g) in others.iter().zip(groups.iter_mut()) {
        g.process(m, &out.commit)?;
    }
    newcomer.join(&out.welcome.expect("a Welcome"))?;
    Ok(t.elapsed())
}

/// A short random tag, so runs against a long-lived node do not collide on names.
fn hex_tag() -> String {
    Identity::generate().public_key()[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many shared bodies the target's store holds, and their bytes (`None`
/// for a node in another process).
async fn shared_bodies(target: &Target) -> anyhow::Result<Option<(u64, u64)>> {
    Ok(match target.store() {
        Some(s) => Some(s.shared_bodies().await?),
        None => None,
    })
}
