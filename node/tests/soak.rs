//! Soak: the node binary under steady mixed load for a while (several groups,
//! each with racing committers, group sends, direct messages and batches, and
//! members long-polling and acking; see `crash_load`). Every promise of the
//! crash test is checked at the end, no call may fail, and the node's resident
//! memory is sampled: its slope is printed (the long run's figure goes in
//! `docs/reliability.md`).
//!
//! CI runs a minute; `scripts/soak.sh` runs thirty:
//! `QPC_SOAK_SECS=1800 QPC_SOAK_GROUPS=8 cargo test -p quicnprotochat --test soak
//! -- --nocapture`.

mod common;
mod crash_load;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::ServerProcess;
use crash_load::{Cast, Ledger};
use quicnprotochat_wire::tls;

fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Least-squares slope of `(seconds, KiB)` samples, in MiB per hour.
fn slope_mib_per_hour(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(x, y), (t, k)| (x + t, y + *k as f64));
    let (mx, my) = (sx / n, sy / n);
    let (mut num, mut den) = (0.0, 0.0);
    for (t, k) in samples {
        num += (t - mx) * (*k as f64 - my);
        den += (t - mx) * (t - mx);
    }
    if den == 0.0 {
        return 0.0;
    }
    num / den / 1024.0 * 3600.0
}

#[test]
fn steady_mixed_load_fails_no_call_and_keeps_every_promise() {
    let secs = env_number("QPC_SOAK_SECS", 60);
    let groups = env_number("QPC_SOAK_GROUPS", 4);
    let pace = Duration::from_millis(env_number("QPC_SOAK_PACE_MS", 2));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = ServerProcess::start(&data, &[]);
    let pid = server.child.id();
    let pinned = tls::read_pinned_cert(&data.join(tls::CERT_FILE)).unwrap();
    let casts: Vec<(Rc<Cast>, Rc<RefCell<Ledger>>)> = (0..groups)
        .map(|g| {
            (
                Rc::new(Cast::new(&format!("soak-{g}"), pace)),
                Rc::default(),
            )
        })
        .collect();
    let local = tokio::task::LocalSet::new();
    let samples = local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for (cast, ledger) in &casts {
            tasks.extend(crash_load::start(server.addr, &pinned, cast, ledger, 0));
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        let every = Duration::from_secs((secs / 60).clamp(1, 10));
        while started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(every).await;
            samples.push((started.elapsed().as_secs_f64(), rss_kib(pid)));
        }
        // Every role ends after its call in flight (a long-poll within its 2 s),
        // so no commit is still landing while the inboxes are read back.
        for (cast, _) in &casts {
            cast.stopping.set(true);
        }
        let stopped = tokio::time::timeout(Duration::from_secs(60), async {
            for t in tasks {
                t.await.expect("a role of the load panicked");
            }
        })
        .await;
        assert!(stopped.is_ok(), "the load did not stop within a minute");
        samples
    });
    let answered: u64 = casts.iter().map(|(_, l)| l.borrow().answered).sum();
    let errors: u64 = casts.iter().map(|(_, l)| l.borrow().errors).sum();
    for (_, l) in &casts {
        // A commit whose call failed (an error, counted above) has an unknown
        // fate; after a graceful stop nothing else is pending.
        l.borrow_mut().node_died();
    }
    local.block_on(&rt, async {
        for (cast, ledger) in &casts {
            crash_load::read_back(server.addr, &pinned, cast, ledger).await;
        }
    });
    let mut acknowledged = 0;
    for (cast, ledger) in &casts {
        acknowledged += ledger.borrow().verify(cast).acknowledged;
    }
    // The first fifth warms caches and queues up: the slope is of the rest.
    let steady = &samples[samples.len() / 5..];
    let first = samples.first().map(|s| s.1).unwrap_or(0);
    let last = samples.last().map(|s| s.1).unwrap_or(0);
    println!(
        "soak {secs} s, {groups} groups: {answered} calls answered, {acknowledged} messages \
         acknowledged, {errors} errors; node RSS {} → {} MiB, steady slope {:+.1} MiB/hour",
        first / 1024,
        last / 1024,
        slope_mib_per_hour(steady)
    );
    assert_eq!(errors, 0, "calls failed while the node was up");
    assert!(acknowledged > 0);
}
