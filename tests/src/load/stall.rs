//! `stall`: how long a quiet client's `ping` takes while a storm of heavy calls
//! from others runs beside it. It measures whether one busy client can slow
//! everyone's answers (one RPC thread doing CPU or disk work for a storm would).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use openmls_memory_storage::MemoryStorage;
use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::HybridKeyPair;
use quicnprotochat_crypto::mls::{GroupMember, Suite};
use quicnprotochat_wire::IdentityKey;

use super::report::{Latency, histogram, record};
use super::scenarios::{connect, progress, run_local};
use super::{Report, Target};

/// What runs beside the pinger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storm {
    /// Nothing: the baseline.
    None,
    /// Connections each uploading 200 KeyPackages again and again (the node
    /// validates every one: signatures, lifetimes).
    KeyPackages {
        /// Storm connections.
        connections: usize,
    },
    /// A max-rate sender into one inbox (64 calls in flight per connection,
    /// on `connections` connections) and a handshake storm (connections opened
    /// and closed back to back).
    Flood {
        /// Flooding connections.
        connections: usize,
    },
    /// Sessions each holding a long-poll open (spread over connections of 25).
    LongPolls {
        /// Long-polling sessions.
        pollers: usize,
    },
    /// The H2 probe of the third security round: connections that stop reading
    /// (their QUIC credit frozen), each with 16 sessions × 8 long-polls, then
    /// woken by 4 × ~1 MiB messages to every inbox: every reply the node would
    /// build is up to 4 MiB and none is read.
    FrozenReaders {
        /// Frozen connections.
        connections: usize,
    },
}

/// Sessions per frozen connection, and long-polls per session.
const FROZEN_SESSIONS: usize = 16;
const FROZEN_WAITS: usize = 8;

/// Long-poll sessions per storm connection.
const POLLERS_PER_CONNECTION: usize = 25;
/// KeyPackages per upload (the node's maximum).
const UPLOAD: usize = 200;

/// `stall`: a quiet client's `ping` round trips while `storm` runs beside it.
pub fn stall(
    target: &Target,
    storm: Storm,
    duration: Duration,
    show_progress: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::new("stall").param("storm", format!("{storm:?}"));
    let (hist, storm_calls, storm_errors) = run_local(async {
        let stop = Rc::new(Cell::new(false));
        let calls = Rc::new(Cell::new(0u64));
        let errors = Rc::new(Cell::new(0u64));
        let mut tasks = Vec::new();
        let mut held = Vec::new();
        let mut endpoints = Vec::new();
        let mut pauses = Vec::new();
        match storm {
            Storm::None => {}
            Storm::KeyPackages { connections } => {
                for _ in 0..connections {
                    let conn = connect(target).await?;
                    // One device's packages, made once, uploaded over and over.
                    let id = Identity::generate();
                    let member = GroupMember::new(&id, MemoryStorage::default())?;
                    let kps = (0..UPLOAD)
                        .map(|_| member.generate_key_package(Suite::Classic, false))
                        .collect::<Result<Vec<_>, _>>()?;
                    let last = member.generate_key_package(Suite::Classic, true)?;
                    let hybrid = HybridKeyPair::generate(1).signed_public(&id).to_bytes();
                    // The session must be the packages' device: authenticate as it.
                    let s_dev = conn.authenticate(&id, None).await?;
                    let (stop, calls, errors) = (stop.clone(), calls.clone(), errors.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        while !stop.get() {
                            // Refused once 1,000 are stored; validated all the same.
                            if s_dev
                                .upload_key_packages(&kps, &last, &hybrid)
                                .await
                                .is_err()
                            {
                                errors.set(errors.get() + 1);
                            }
                            calls.set(calls.get() + 1);
                        }
                    }));
                    held.push(conn);
                }
            }
            Storm::Flood { connections } => {
                let victim = IdentityKey(Identity::generate().public_key());
                for _ in 0..connections {
                    let conn = connect(target).await?;
                    let s = conn.authenticate(&Identity::generate(), None).await?;
                    let (stop, calls, errors) = (stop.clone(), calls.clone(), errors.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let payload = [7u8; 1024];
                        while !stop.get() {
                            let burst = (0..64).map(|_| s.enqueue(&victim, &payload));
                            for r in futures::future::join_all(burst).await {
                                calls.set(calls.get() + 1);
                                // Refusals (a full inbox, a budget) are the point.
                                if r.is_err() {
                                    errors.set(errors.get() + 1);
                                }
                            }
                        }
                    }));
                    held.push(conn);
                }
            }
            Storm::FrozenReaders { connections } => {
                let mut inboxes = Vec::new();
                for _ in 0..connections {
                    let pause = Rc::new(quicnprotochat_client::rpc::ReplyPause::default());
                    let endpoint = quicnprotochat_client::client_endpoint(
                        target.addr,
                        quicnprotochat_wire::tls::read_pinned_cert(&target.ca_cert)?,
                    )?;
                    let conn = quicnprotochat_client::NodeConnection::connect_with_reply_pause(
                        &endpoint,
                        target.addr,
                        pause.clone(),
                    )
                    .await?;
                    let mut sessions = Vec::new();
                    for _ in 0..FROZEN_SESSIONS {
                        let id = Identity::generate();
                        inboxes.push(IdentityKey(id.public_key()));
                        sessions.push(conn.authenticate(&id, None).await?);
                    }
                    pause.pause();
                    pauses.push(pause.clone());
                    for s in sessions {
                        for _ in 0..FROZEN_WAITS {
                            let (s, calls) = (s.clone(), calls.clone());
                            tasks.push(tokio::task::spawn_local(async move {
                                // Answered only if the node closes the connection.
                                let _ = s.fetch_wait(0, 0, Duration::from_secs(60)).await;
                                calls.set(calls.get() + 1);
                            }));
                        }
                    }
                    held.push(conn);
                    // The endpoint drives the frozen connection: kept to the end.
                    endpoints.push(endpoint);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let feeder = connect(target).await?;
                let fs = feeder.authenticate(&Identity::generate(), None).await?;
                let payload = vec![7u8; 1024 * 1024 - 4096];
                for inbox in &inboxes {
                    for _ in 0..4 {
                        if fs.enqueue(inbox, &payload).await.is_err() {
                            errors.set(errors.get() + 1);
                        }
                    }
                }
                held.push(feeder);
            }
            Storm::LongPolls { pollers } => {
                let bar = progress(show_progress, pollers as u64, "long-polls");
                let mut started = 0;
                while started < pollers {
                    let conn = connect(target).await?;
                    for _ in 0..POLLERS_PER_CONNECTION.min(pollers - started) {
                        let s = conn.authenticate(&Identity::generate(), None).await?;
                        let (stop, calls, errors) = (stop.clone(), calls.clone(), errors.clone());
                        tasks.push(tokio::task::spawn_local(async move {
                            while !stop.get() {
                                match s.fetch_wait(0, 0, Duration::from_secs(5)).await {
                                    Ok(_) => calls.set(calls.get() + 1),
                                    // The connection closing at the end is no error.
                                    Err(_) if stop.get() => {}
                                    Err(_) => errors.set(errors.get() + 1),
                                }
                            }
                        }));
                        started += 1;
                    }
                    held.push(conn);
                    bar.set_position(started as u64);
                }
                bar.finish_and_clear();
                // Let every long-poll reach the node before measuring.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let pinger = connect(target).await?;
        let mut hist = histogram();
        let measure = async {
            let start = Instant::now();
            while start.elapsed() < duration {
                let t = Instant::now();
                if pinger.ping().await.is_ok() {
                    record(&mut hist, t.elapsed());
                } else {
                    errors.set(errors.get() + 1);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop.set(true);
        };
        // The flood's handshake storm: connections opened and closed back to back.
        let handshakes = async {
            if !matches!(storm, Storm::Flood { .. }) {
                return;
            }
            while !stop.get() {
                if let Ok(c) = connect(target).await {
                    c.close().await;
                }
                calls.set(calls.get() + 1);
            }
        };
        tokio::join!(measure, handshakes);
        pinger.close().await;
        // A frozen connection reads again to close: a close waits for its
        // stream, which a paused reader never drains.
        for pause in &pauses {
            pause.resume();
        }
        for conn in held {
            conn.close().await;
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok((hist, calls.get(), errors.get()))
    })?;
    report.latency = Some(Latency::of(&hist));
    report.figure("storm_calls", storm_calls as f64);
    // The storm's refusals are the node defending itself, not failures of what
    // this scenario measures (the quiet client's pings).
    report.figure("storm_calls_refused", storm_errors as f64);
    Ok(report)
}
