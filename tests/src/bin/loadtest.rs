//! `loadtest`: measures a quicnprotochat node. Starts its own node (in this
//! process, temporary data) unless `--server` names one.
//!
//! `cargo run --release -p quicnprotochat-tests --bin loadtest -- enqueue`
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quicnprotochat_tests::load::{self, DeliverParams, EnqueueParams, GroupParams, Target};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    propagate_version = true,
    about = "Load tests for a quicnprotochat node"
)]
struct Cli {
    /// Node to test instead of an in-process one (HOST:PORT).
    #[arg(long, global = true)]
    server: Option<SocketAddr>,
    /// The process id of the --server node, when it runs on this machine: its
    /// CPU time is then reported.
    #[arg(long, global = true, requires = "server")]
    node_pid: Option<u32>,
    /// Its certificate (with --server).
    #[arg(long, global = true, default_value = "data/server-cert.der")]
    ca_cert: PathBuf,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Write the latency plot (SVG: latency by percentile) to this file, for
    /// scenarios that measure latency.
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
    /// Run the in-process node (and the `store` scenario) on this PostgreSQL
    /// database (postgres://USER@HOST:PORT/DB) instead of a redb file.
    #[arg(long, global = true)]
    store: Option<String>,
    /// Seconds to run (timed scenarios).
    #[arg(long, global = true, default_value_t = 10)]
    duration: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Durable enqueues per second (and latency) from many calls in flight.
    Enqueue {
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 1000)]
        inboxes: usize,
        #[arg(long, default_value_t = 1024)]
        payload: usize,
    },
    /// The store alone (no network): the ceiling for `enqueue`.
    Store {
        /// Commit with one fsync instead of redb's two-phase commit (what the
        /// node does): measures the second fsync's cost.
        #[arg(long)]
        one_phase_commit: bool,
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        #[arg(long, default_value_t = 1000)]
        inboxes: usize,
        #[arg(long, default_value_t = 1024)]
        payload: usize,
    },
    /// Enqueue-to-delivery latency with long-polling receivers at an offered rate.
    Deliver {
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        #[arg(long, default_value_t = 16)]
        receivers: usize,
        /// Receivers subscribe to push (`Session.subscribe`) instead of long-polling.
        #[arg(long)]
        push: bool,
        #[arg(long, default_value_t = 1024)]
        payload: usize,
    },
    /// The disk's floor: latency of 4 KiB appended and fdatasync'ed, N times,
    /// in DIR (default: the temporary directory).
    Disk {
        #[arg(long, default_value_t = 1000)]
        syncs: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Open and hold N authenticated connections.
    Connections {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Fill N inboxes, restart the node, time its return.
    Inboxes {
        #[arg(long, default_value_t = 100_000)]
        count: usize,
    },
    /// `ping` latency of a quiet client while a storm of heavy calls runs beside
    /// it: `--storm none|keypackages|longpolls|flood|frozen`.
    Stall {
        #[arg(long, default_value = "none")]
        storm: String,
        /// Storm connections (keypackages, flood, frozen) or long-polling
        /// sessions (longpolls).
        #[arg(long, default_value_t = 4)]
        size: usize,
    },
    /// Real MLS clients in one group: send-to-all-decrypted latency, and one
    /// add-member commit processed by all, next to OpenMLS' own cost.
    Groups {
        #[arg(long, default_value_t = 20)]
        members: usize,
        #[arg(long, default_value_t = 50)]
        messages: usize,
        /// The classic (X25519) MLS suite instead of the post-quantum default.
        #[arg(long)]
        classic: bool,
    },
}

/// glibc's malloc raises its mmap threshold to the largest block freed, so after
/// the first enrolment Argon2's 19 MiB buffer comes from the heap, and each
/// simulated client's enrolment leaves ~20 MiB there that is never returned
/// (measured: 17 MiB RSS per member at 100 members; 1.2 MiB with a fixed
/// threshold). A real client enrols once. The harness runs itself again with a
/// fixed threshold of 16 MiB (an environment variable: no `unsafe` needed):
/// above Argon2's buffer's size, so it is mapped and returned, and above a
/// group state's, so those stay on the heap (a 128 KiB threshold cost 15 % of
/// the decrypt rate in page faults).
const MALLOC_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";

fn main() -> ExitCode {
    if std::env::var_os(MALLOC_THRESHOLD_VAR).is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        return match std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(MALLOC_THRESHOLD_VAR, "16777216")
            .status()
        {
            Ok(status) if status.success() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: cannot run the harness again: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let show = !cli.json;
    let duration = Duration::from_secs(cli.duration);
    let mut target = match cli.server {
        Some(addr) => Target::external(addr, cli.ca_cert.clone()).with_pid(cli.node_pid),
        None if matches!(cli.scenario, Scenario::Store { .. } | Scenario::Disk { .. }) => {
            Target::external("127.0.0.1:0".parse()?, cli.ca_cert.clone())
        }
        None => Target::in_process(cli.store.clone())?,
    };
    if target.is_in_process() {
        eprintln!(
            "node listening on {} (certificate {})",
            target.addr,
            target.ca_cert.display()
        );
    }
    let report = match cli.scenario {
        Scenario::Enqueue {
            connections,
            in_flight,
            inboxes,
            payload,
        } => load::enqueue(
            &target,
            &EnqueueParams {
                connections,
                in_flight,
                inboxes,
                payload,
                duration,
            },
            show,
        )?,
        Scenario::Store {
            one_phase_commit,
            in_flight,
            inboxes,
            payload,
        } => load::store(
            &EnqueueParams {
                connections: 1,
                in_flight,
                inboxes,
                payload,
                duration,
            },
            cli.store.as_deref(),
            quicnprotochat_actors::store::StoreOptions {
                two_phase_commit: !one_phase_commit,
                ..Default::default()
            },
            show,
        )?,
        Scenario::Deliver {
            rate,
            receivers,
            push,
            payload,
        } => load::deliver(
            &target,
            &DeliverParams {
                rate,
                receivers,
                push,
                payload,
                duration,
            },
            show,
        )?,
        Scenario::Disk { syncs, dir } => {
            load::disk(&dir.unwrap_or_else(std::env::temp_dir), syncs)?
        }
        Scenario::Connections { count } => load::connections(&target, count, show)?,
        Scenario::Inboxes { count } => load::inboxes(&mut target, count, show)?,
        Scenario::Stall { storm, size } => {
            let storm = match storm.as_str() {
                "none" => load::Storm::None,
                "keypackages" => load::Storm::KeyPackages { connections: size },
                "longpolls" => load::Storm::LongPolls { pollers: size },
                "flood" => load::Storm::Flood { connections: size },
                "frozen" => load::Storm::FrozenReaders { connections: size },
                other => anyhow::bail!(
                    "unknown storm {other:?}: none, keypackages, longpolls, flood or frozen"
                ),
            };
            load::stall(&target, storm, duration, show)?
        }
        Scenario::Groups {
            members,
            messages,
            classic,
        } => {
            let suite = if classic {
                quicnprotochat_crypto::mls::Suite::Classic
            } else {
                quicnprotochat_crypto::mls::Suite::PostQuantum
            };
            load::groups(
                &target,
                &GroupParams {
                    members,
                    messages,
                    suite,
                },
                show,
            )?
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &cli.plot {
        let Some(latency) = &report.latency else {
            anyhow::bail!("scenario {} measures no latency to plot", report.scenario);
        };
        let params: Vec<String> = report
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let title = format!("{} ({})", report.scenario, params.join(" "));
        std::fs::write(path, load::plot::latency_svg(&title, latency))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        eprintln!("latency plot written to {}", path.display());
    }
    // A run in which calls failed measured something else than it says.
    if report.errors > 0 {
        anyhow::bail!(
            "{} calls failed; the first: {}",
            report.errors,
            report
                .first_error
                .as_deref()
                .unwrap_or("(no reason recorded)")
        );
    }
    Ok(())
}
