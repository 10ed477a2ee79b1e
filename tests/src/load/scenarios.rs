//! The scenarios. Each drives real clients from the calling thread (a
//! single-threaded runtime, as capnp-rpc requires) against the target node.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use quicnprotochat_actors::core::inbox::InboxLimits;
use quicnprotochat_actors::inbox::{InboxRegistry, InboxSettings};
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::postgres::PgStore;
use quicnprotochat_actors::store::{ServerStore, Store, StoreOptions};
use quicnprotochat_client::{NodeConnection, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_wire::IdentityKey;
use quicnprotochat_wire::tls;

use super::report::{Failures, Latency, histogram, record};
use super::sys::{NODE_THREADS, rss_bytes, thread_cpu_seconds};
use super::{NODE_THREAD, Report, Target};

/// Runs `f` on a fresh single-threaded runtime with a `LocalSet`.
pub(crate) fn run_local<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let out = tokio::task::LocalSet::new().block_on(&rt, f);
    // The endpoint's driver lived on this runtime: never reuse it past it.
    ENDPOINT.with(|e| e.borrow_mut().take());
    out
}

pub(crate) fn progress(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:12} [{elapsed_precise}] {wide_bar} {pos}/{len}",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

thread_local! {
    /// One client endpoint (one UDP socket) per generator thread for all its
    /// connections, as a real multi-connection client would have.
    static ENDPOINT: RefCell<Option<(std::net::SocketAddr, quinn::Endpoint)>> = const { RefCell::new(None) };
}

pub(crate) async fn connect(target: &Target) -> anyhow::Result<NodeConnection> {
    let endpoint = shared_endpoint(target)?;
    Ok(NodeConnection::connect_via(&endpoint, target.addr).await?)
}

/// This generator thread's one client endpoint to `target` (created on first use,
/// on the thread's runtime).
fn shared_endpoint(target: &Target) -> anyhow::Result<quinn::Endpoint> {
    let existing = ENDPOINT.with(|e| {
        e.borrow()
            .as_ref()
            .filter(|(addr, _)| *addr == target.addr)
            .map(|(_, ep)| ep.clone())
    });
    let endpoint = match existing {
        Some(ep) => ep,
        None => {
            let pinned = tls::read_pinned_cert(&target.ca_cert)?;
            let ep = quicnprotochat_client::client_endpoint(target.addr, pinned)?;
            ENDPOINT.with(|e| *e.borrow_mut() = Some((target.addr, ep.clone())));
            ep
        }
    };
    Ok(endpoint)
}

async fn session(target: &Target) -> anyhow::Result<(NodeConnection, SessionHandle)> {
    let conn = connect(target).await?;
    let s = conn.authenticate(&Identity::generate(), None).await?;
    Ok((conn, s))
}

fn inbox_key(i: usize) -> IdentityKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64).to_le_bytes());
    k[31] = 0x5a;
    IdentityKey(k)
}

fn merge(into: &mut Histogram<u64>, parts: impl IntoIterator<Item = Histogram<u64>>) {
    for p in parts {
        let _ = into.add(p);
    }
}

/// `enqueue`: durable messages per second from many calls in flight.
#[derive(Debug, Clone)]
pub struct EnqueueParams {
    /// Connections, each with its own session.
    pub connections: usize,
    /// Calls in flight per connection.
    pub in_flight: usize,
    /// Distinct inboxes written to.
    pub inboxes: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// How long to run.
    pub duration: Duration,
}

impl Default for EnqueueParams {
    fn default() -> Self {
        EnqueueParams {
            connections: 4,
            in_flight: 64,
            inboxes: 1000,
            payload: 1024,
            duration: Duration::from_secs(10),
        }
    }
}

/// `enqueue`: durable enqueues per second (and latency) from many calls in flight.
pub fn enqueue(target: &Target, p: &EnqueueParams, show_progress: bool) -> anyhow::Result<Report> {
    let mut report = Report::new("enqueue")
        .param("connections", p.connections)
        .param("in_flight_per_connection", p.in_flight)
        .param("inboxes", p.inboxes)
        .param("payload", p.payload)
        .param("duration_s", p.duration.as_secs_f64());
    let errors = Failures::default();
    let (count, hist, elapsed, cpu) = run_local(async {
        let mut sessions = Vec::new();
        for _ in 0..p.connections {
            sessions.push(session(target).await?);
        }
        let count = Rc::new(Cell::new(0u64));
        let payload: Rc<Vec<u8>> = Rc::new((0..p.payload).map(|i| i as u8).collect());
        let cpu_before = target.node_cpu_seconds();
        let start = Instant::now();
        let deadline = start + p.duration;
        let bar = progress(show_progress, p.duration.as_secs(), "enqueue");
        let mut tasks = Vec::new();
        for (c, (_, s)) in sessions.iter().enumerate() {
            for k in 0..p.in_flight {
                let (s, count, errors, payload) =
                    (s.clone(), count.clone(), errors.clone(), payload.clone());
                let mut next = (c * p.in_flight + k) * 7919;
                let inboxes = p.inboxes;
                tasks.push(tokio::task::spawn_local(async move {
                    let mut h = histogram();
                    while Instant::now() < deadline {
                        next = next.wrapping_add(104_729);
                        let t = Instant::now();
                        match s.enqueue(&inbox_key(next % inboxes), &payload).await {
                            Ok(_) => {
                                record(&mut h, t.elapsed());
                                count.set(count.get() + 1);
                            }
                            Err(e) => errors.note(e),
                        }
                    }
                    h
                }));
            }
        }
        let ticker = {
            let bar = bar.clone();
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    bar.set_position(start.elapsed().as_secs());
                }
            })
        };
        let mut all = histogram();
        for t in tasks {
            merge(&mut all, [t.await?]);
        }
        let elapsed = start.elapsed();
        ticker.abort();
        bar.finish_and_clear();
        let cpu = target
            .node_cpu_seconds()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        for (conn, _) in sessions {
            conn.close().await;
        }
        anyhow::Ok((count.get(), all, elapsed, cpu))
    })?;
    report.figure("messages_per_s", count as f64 / elapsed.as_secs_f64());
    report.figure("messages", count as f64);
    if let Some(cpu) = cpu
        && count > 0
    {
        report.figure("node_cpu_us_per_message", cpu * 1e6 / count as f64);
    }
    report.latency = Some(Latency::of(&hist));
    errors.write_to(&mut report);
    Ok(report)
}

/// `store`: the node's store alone (writer with group commit behind inbox
/// actors, no network): the local ceiling `enqueue` is compared against.
///
/// `redb` sets how the redb store commits (the node's default, or one fsync per
/// commit to measure what two-phase commit costs); ignored on PostgreSQL.
pub fn store(
    p: &EnqueueParams,
    postgres: Option<&str>,
    redb: StoreOptions,
    show_progress: bool,
) -> anyhow::Result<Report> {
    let report = Report::new("store")
        .param(
            "backend",
            if postgres.is_some() {
                "postgres"
            } else {
                "redb"
            },
        )
        .param("in_flight", p.connections * p.in_flight)
        .param("inboxes", p.inboxes)
        .param("payload", p.payload)
        .param("duration_s", p.duration.as_secs_f64());
    let mut report = if postgres.is_none() && !redb.two_phase_commit {
        report.param("commit", "one-phase")
    } else {
        report
    };
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NODE_THREAD)
        .enable_all()
        .build()?;
    let total_in_flight = p.connections * p.in_flight;
    let (count, hist, elapsed, cpu) = runtime.block_on(async {
        let store = match postgres {
            Some(url) => Store::Postgres(Box::new(PgStore::open(url).await?)),
            None => Store::Redb(ServerStore::open(&dir.path().join("node.redb"), redb)?),
        };
        let (writer, thread) = StoreWriter::start_for(&store)?;
        let registry = InboxRegistry::start(
            writer.clone(),
            InboxSettings {
                limits: InboxLimits {
                    queue_limit: u64::MAX / 2,
                    max_payload: p.payload.max(1),
                },
                idle_after: Duration::from_secs(60),
                long_polls: 8,
                live_actors: 1_000_000,
            },
        )
        .await?;
        let payload: Vec<u8> = (0..p.payload).map(|i| i as u8).collect();
        let cpu_before = thread_cpu_seconds(&NODE_THREADS);
        let start = Instant::now();
        let deadline = start + p.duration;
        let bar = progress(show_progress, p.duration.as_secs(), "store");
        let mut tasks = Vec::new();
        for k in 0..total_in_flight {
            let (registry, payload) = (registry.clone(), payload.clone());
            let inboxes = p.inboxes;
            tasks.push(tokio::spawn(async move {
                let mut h = histogram();
                let mut n = 0u64;
                let mut next = k * 7919;
                while Instant::now() < deadline {
                    next = next.wrapping_add(104_729);
                    let t = Instant::now();
                    if registry
                        .enqueue(inbox_key(next % inboxes), payload.clone())
                        .await
                        .is_ok()
                    {
                        record(&mut h, t.elapsed());
                        n += 1;
                    }
                }
                (n, h)
            }));
        }
        let mut all = histogram();
        let mut count = 0;
        for t in tasks {
            let (n, h) = t.await?;
            count += n;
            merge(&mut all, [h]);
        }
        let elapsed = start.elapsed();
        bar.finish_and_clear();
        let cpu = thread_cpu_seconds(&NODE_THREADS) - cpu_before;
        registry.stop().await;
        writer.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        anyhow::Ok((count, all, elapsed, cpu))
    })?;
    report.figure("messages_per_s", count as f64 / elapsed.as_secs_f64());
    report.figure("messages", count as f64);
    if count > 0 {
        report.figure("cpu_us_per_message", cpu * 1e6 / count as f64);
    }
    report.latency = Some(Latency::of(&hist));
    Ok(report)
}

/// `deliver`: receivers long-poll while senders offer a fixed rate; the latency
/// is from enqueue to the receiver holding the message.
#[derive(Debug, Clone)]
pub struct DeliverParams {
    /// Messages offered per second.
    pub rate: u64,
    /// Receivers, one connection each.
    pub receivers: usize,
    /// Receivers subscribe to push (`Session.subscribe`) instead of long-polling.
    pub push: bool,
    /// Payload bytes per message.
    pub payload: usize,
    /// How long to run.
    pub duration: Duration,
}

impl Default for DeliverParams {
    fn default() -> Self {
        DeliverParams {
            rate: 2000,
            receivers: 16,
            push: false,
            payload: 1024,
            duration: Duration::from_secs(10),
        }
    }
}

/// `deliver`: enqueue-to-delivery latency with long-polling (or pushed-to)
/// receivers at an offered rate.
pub fn deliver(target: &Target, p: &DeliverParams, show_progress: bool) -> anyhow::Result<Report> {
    let mut report = Report::new("deliver")
        .param("offered_per_s", p.rate)
        .param("receivers", p.receivers)
        .param("receive", if p.push { "push" } else { "long-poll" })
        .param("payload", p.payload.max(8))
        .param("duration_s", p.duration.as_secs_f64());
    let errors = Failures::default();
    let (sent, received, hist, elapsed) = run_local(async {
        let epoch = Instant::now();
        let mut receivers = Vec::new();
        for _ in 0..p.receivers {
            let conn = connect(target).await?;
            let id = Identity::generate();
            let s = conn.authenticate(&id, None).await?;
            receivers.push((conn, s, IdentityKey(id.public_key())));
        }
        let (_sconn, sender) = session(target).await?;
        let stop = Rc::new(Cell::new(false));
        let received = Rc::new(Cell::new(0u64));
        let hist = Rc::new(RefCell::new(histogram()));
        let mut recv_tasks = Vec::new();
        for (_, s, _) in &receivers {
            let (s, stop, received, hist) =
                (s.clone(), stop.clone(), received.clone(), hist.clone());
            let push = p.push;
            recv_tasks.push(tokio::task::spawn_local(async move {
                let got = |batch: &[quicnprotochat_wire::Envelope]| {
                    let now = epoch.elapsed();
                    for env in batch {
                        let sent_at =
                            u64::from_le_bytes(env.data[..8].try_into().expect("8 bytes"));
                        record(
                            &mut hist.borrow_mut(),
                            now.saturating_sub(Duration::from_nanos(sent_at)),
                        );
                        received.set(received.get() + 1);
                    }
                };
                if push {
                    let (to, mut pushed) = tokio::sync::mpsc::channel(1);
                    if s.subscribe(0, to).await.is_err() {
                        return;
                    }
                    while !stop.get() {
                        let next = tokio::time::timeout(Duration::from_millis(500), pushed.recv());
                        match next.await {
                            Err(_) => continue,
                            Ok(Some(quicnprotochat_client::Pushed::Batch {
                                envelopes,
                                applied,
                            })) => {
                                got(&envelopes);
                                // Acked in the answer: no ack call.
                                if let Some(last) = envelopes.last() {
                                    applied.up_to(last.seq);
                                }
                            }
                            Ok(_) => break,
                        }
                    }
                    return;
                }
                let mut after = 0;
                while !stop.get() {
                    let Ok(batch) = s.fetch_wait(after, 0, Duration::from_millis(500)).await else {
                        break;
                    };
                    got(&batch);
                    if let Some(last) = batch.last() {
                        after = last.seq;
                        let _ = s.ack(after).await;
                    }
                }
            }));
        }
        let targets: Vec<IdentityKey> = receivers.iter().map(|(_, _, k)| *k).collect();
        let interval = Duration::from_secs_f64(1.0 / p.rate.max(1) as f64);
        let start = Instant::now();
        let bar = progress(show_progress, p.duration.as_secs(), "deliver");
        let in_flight = Rc::new(Cell::new(0usize));
        let mut sent = 0u64;
        while start.elapsed() < p.duration {
            // Offer messages on schedule; skip (and count) when 1024 are in flight.
            let due = (start.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64;
            while sent < due {
                if in_flight.get() >= 1024 {
                    errors.note("1024 enqueues in flight: an offered message was skipped");
                    sent += 1;
                    continue;
                }
                let mut payload = vec![0u8; p.payload.max(8)];
                payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
                let (s, to, in_flight, errors) = (
                    sender.clone(),
                    targets[sent as usize % targets.len()],
                    in_flight.clone(),
                    errors.clone(),
                );
                in_flight.set(in_flight.get() + 1);
                tokio::task::spawn_local(async move {
                    if let Err(e) = s.enqueue(&to, &payload).await {
                        errors.note(e);
                    }
                    in_flight.set(in_flight.get() - 1);
                });
                sent += 1;
            }
            bar.set_position(start.elapsed().as_secs());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Let the last messages arrive.
        let drain = Instant::now();
        while received.get() + errors.count() < sent && drain.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = start.elapsed();
        stop.set(true);
        bar.finish_and_clear();
        for t in recv_tasks {
            let _ = t.await;
        }
        let h = hist.borrow().clone();
        anyhow::Ok((sent, received.get(), h, elapsed))
    })?;
    report.figure("offered", sent as f64);
    report.figure("delivered", received as f64);
    report.figure("delivered_per_s", received as f64 / elapsed.as_secs_f64());
    report.latency = Some(Latency::of(&hist));
    let undelivered = sent.saturating_sub(received + errors.count());
    for _ in 0..undelivered {
        errors.note("a message enqueued was not delivered within 10 s of the end");
    }
    errors.write_to(&mut report);
    Ok(report)
}

/// `connections`: opens and holds N authenticated connections.
pub fn connections(target: &Target, count: usize, show_progress: bool) -> anyhow::Result<Report> {
    let mut report = Report::new("connections").param("connections", count);
    let errors = Failures::default();
    let (elapsed, rss_delta) = run_local(async {
        let rss_before = rss_bytes();
        let bar = progress(show_progress, count as u64, "connections");
        let start = Instant::now();
        let mut held = Vec::with_capacity(count);
        // 32 handshakes at a time.
        let mut remaining = count;
        while remaining > 0 {
            let n = remaining.min(32);
            let opened = futures::future::join_all((0..n).map(|_| session(target))).await;
            for o in opened {
                match o {
                    Ok(c) => held.push(c),
                    Err(e) => errors.note(e),
                }
            }
            remaining -= n;
            bar.set_position((count - remaining) as u64);
        }
        let elapsed = start.elapsed();
        // Let allocations settle, then look at memory with everything held.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_delta = rss_bytes().saturating_sub(rss_before);
        bar.finish_and_clear();
        for (conn, _) in held {
            conn.close().await;
        }
        (elapsed, rss_delta)
    });
    let opened = count as u64 - errors.count();
    report.figure("handshakes_per_s", opened as f64 / elapsed.as_secs_f64());
    // Both ends live in this process when the node is in-process: an upper bound.
    report.figure(
        "rss_bytes_per_connection_both_ends",
        rss_delta as f64 / opened.max(1) as f64,
    );
    errors.write_to(&mut report);
    Ok(report)
}

/// `inboxes`: fills N inboxes, restarts the node, and times its way back.
pub fn inboxes(target: &mut Target, count: usize, show_progress: bool) -> anyhow::Result<Report> {
    let mut report = Report::new("inboxes").param("inboxes", count);
    let errors = Failures::default();
    let fill_elapsed = run_local(async {
        let mut sessions = Vec::new();
        for _ in 0..4 {
            sessions.push(session(target).await?);
        }
        let next = Rc::new(Cell::new(0usize));
        let bar = progress(show_progress, count as u64, "fill");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (_, s) in &sessions {
            for _ in 0..64 {
                let (s, next, errors, bar) = (s.clone(), next.clone(), errors.clone(), bar.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    loop {
                        let i = next.get();
                        if i >= count {
                            break;
                        }
                        next.set(i + 1);
                        if let Err(e) = s.enqueue(&inbox_key(i), b"hello").await {
                            errors.note(e);
                        }
                        if i % 1000 == 0 {
                            bar.set_position(i as u64);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        bar.finish_and_clear();
        for (conn, _) in sessions {
            conn.close().await;
        }
        anyhow::Ok(start.elapsed())
    })?;
    report.figure(
        "fill_messages_per_s",
        count as f64 / fill_elapsed.as_secs_f64(),
    );
    if target.is_in_process() {
        let bind = target.restart()?;
        let t = Instant::now();
        run_local(async {
            let conn = connect(target).await?;
            conn.health().await?;
            anyhow::Ok(())
        })?;
        report.figure("restart_to_bound_ms", bind.as_secs_f64() * 1000.0);
        report.figure(
            "restart_to_first_answer_ms",
            (bind + t.elapsed()).as_secs_f64() * 1000.0,
        );
        report.figure(
            "rss_mib_after_restart",
            rss_bytes() as f64 / (1024.0 * 1024.0),
        );
    }
    errors.write_to(&mut report);
    Ok(report)
}
