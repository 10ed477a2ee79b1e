//! Crash consistency of the node binary under mixed load (enqueues, batches,
//! group sends, commits with fan-out, long-polls and acks; see `crash_load`):
//! the node dies again and again, at moments chosen by a seed or at the writer's
//! named crash points, and after each restart every promise still holds.
//!
//! CI runs a few moments; `scripts/crash-points.sh` runs a hundred:
//! `QPC_CRASH_MOMENTS=100 QPC_CRASH_SEED=7 cargo test --release -p quicnprotochat
//! --test crash_points -- --nocapture`.

mod common;
mod crash_load;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::ServerProcess;
use crash_load::{Cast, Ledger};
use quicnprotochat_actors::store::crash_point::{CRASH_POINT_ENV, CrashPoint};
use quicnprotochat_wire::tls;

/// xorshift64*: replayable from its seed.
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `range`.
    fn pick(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        range.start() + self.next() % (range.end() - range.start() + 1)
    }
}

/// How a life of the node ends.
enum Death {
    /// SIGKILL from outside once `answers` more calls were answered, then
    /// `extra` later.
    KillAfter { answers: u64, extra: Duration },
    /// The writer aborts at its armed crash point.
    AtCrashPoint,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One life of the node under load, ended by `death`.
fn live_and_die(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    env: &[(&str, String)],
    cast: &Rc<Cast>,
    ledger: &Rc<std::cell::RefCell<Ledger>>,
    segment: u32,
    death: Death,
) {
    let mut server = ServerProcess::start_env(data, &[], env);
    let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async {
        let tasks = crash_load::start(server.addr, &pinned, cast, ledger, segment);
        let deadline = Instant::now() + Duration::from_secs(90);
        match death {
            Death::KillAfter { answers, extra } => {
                let target = ledger.borrow().answered + answers;
                while ledger.borrow().answered < target {
                    assert!(
                        Instant::now() < deadline,
                        "segment {segment}: the load never got {answers} answers"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(extra).await;
                server.signal("-KILL");
                server.child.wait().unwrap();
            }
            Death::AtCrashPoint => loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    assert_eq!(
                        status.signal(),
                        Some(6),
                        "segment {segment}: the node ended by its crash point (SIGABRT), not {status}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "segment {segment}: the crash point was never reached"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
        }
        for t in tasks {
            t.abort();
        }
    });
    ledger.borrow_mut().node_died();
}

/// Restarts the node once more, reads every inbox back and checks the ledger.
fn read_back_and_verify(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    cast: &Cast,
    ledger: &Rc<std::cell::RefCell<Ledger>>,
) -> crash_load::Figures {
    let server = ServerProcess::start(data, &[]);
    let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(
        rt,
        crash_load::read_back(server.addr, &pinned, cast, ledger),
    );
    ledger.borrow().verify(cast)
}

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_under_mixed_load_loses_nothing_acknowledged() {
    let moments = env_number("QPC_CRASH_MOMENTS", 5) as u32;
    let seed = env_number("QPC_CRASH_SEED", 1);
    println!("seed {seed} (replay: QPC_CRASH_SEED={seed} QPC_CRASH_MOMENTS={moments})");
    let mut rng = Rng::seeded(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = runtime();
    let cast = Rc::new(Cast::new("crash-group", Duration::ZERO));
    let ledger = Rc::default();
    let started = Instant::now();
    for segment in 0..moments {
        let death = Death::KillAfter {
            answers: rng.pick(1..=300),
            extra: Duration::from_micros(rng.pick(0..=20_000)),
        };
        live_and_die(&rt, &data, &[], &cast, &ledger, segment, death);
    }
    let figures = read_back_and_verify(&rt, &data, &cast, &ledger);
    println!(
        "{moments} kills in {:.1} s: {figures}",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.acknowledged > 0 && figures.commits_accepted > 0);
}

#[test]
fn the_node_dying_at_each_named_point_of_the_writer_loses_nothing_acknowledged() {
    let seed = env_number("QPC_CRASH_SEED", 1);
    let mut rng = Rng::seeded(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = runtime();
    let cast = Rc::new(Cast::new("crash-group", Duration::ZERO));
    let ledger = Rc::default();
    let mut segment = 0;
    for point in CrashPoint::ALL {
        // A kill elsewhere first, so each point also meets a store that was cut off.
        let death = Death::KillAfter {
            answers: rng.pick(1..=100),
            extra: Duration::ZERO,
        };
        live_and_die(&rt, &data, &[], &cast, &ledger, segment, death);
        segment += 1;
        let plan = format!("{}:{}", point.name(), rng.pick(2..=30));
        let env = [(CRASH_POINT_ENV, plan)];
        live_and_die(
            &rt,
            &data,
            &env,
            &cast,
            &ledger,
            segment,
            Death::AtCrashPoint,
        );
        segment += 1;
    }
    let figures = read_back_and_verify(&rt, &data, &cast, &ledger);
    println!("seed {seed}: {figures}");
    assert!(figures.acknowledged > 0 && figures.commits_accepted > 0);
}
