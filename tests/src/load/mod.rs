//! The load-test harness: scenarios against a real node (QUIC, TLS, Cap'n Proto,
//! fsync'd redb), latency histograms, and a report for people and machines.
//!
//! The node runs in this process on a runtime of its own whose threads are named,
//! so the node's CPU time can be told apart from the load generator's (which runs
//! on the calling thread).

mod disk;
mod groups;
pub mod plot;
mod report;
mod scenarios;
mod stall;
mod sys;

pub use disk::disk;
pub use groups::{GroupParams, groups};
pub use report::{Latency, Report};
pub use scenarios::*;
pub use stall::{Storm, stall};

use std::net::SocketAddr;
use std::path::PathBuf;

use quicnprotochat::config::ServerConfig;
use quicnprotochat::server::Server;
use tokio::sync::oneshot;

/// Name prefix of the node's own threads.
pub const NODE_THREAD: &str = "qpc-node";

/// A node for the load test: in-process on its own runtime, or one that runs
/// elsewhere (`--server`).
impl Target {
    /// How the client actor trees of the harness reach the node.
    pub fn address(&self) -> anyhow::Result<quicnprotochat_client::actors::NodeAddress> {
        Ok(quicnprotochat_client::actors::NodeAddress {
            addr: self.addr,
            trust: quicnprotochat_wire::tls::read_pinned_cert(&self.ca_cert)?.into(),
            auth_token: None,
            reconnect_patience: std::time::Duration::from_secs(10),
            endpoint: None,
            connect_within: None,
            fail_fast: None,
        })
    }

    /// The node's database, when it runs in this process (for storage figures).
    pub fn store(&self) -> Option<quicnprotochat_actors::store::Store> {
        self.node.as_ref().and_then(|n| n.store.clone())
    }
}

/// The node under test.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate.
    pub ca_cert: PathBuf,
    node: Option<InProcessNode>,
    /// The process id of an external node on this machine, whose CPU time the
    /// scenarios then report (`--node-pid`).
    external_pid: Option<u32>,
}

struct InProcessNode {
    runtime: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    config: ServerConfig,
    /// Dropped while the node is down (it holds the database open).
    store: Option<quicnprotochat_actors::store::Store>,
    _dir: Option<tempfile::TempDir>,
}

/// Limits a load test must not trip over: it measures the store and the wire,
/// not the abuse protections.
pub fn load_test_config(data_dir: PathBuf) -> ServerConfig {
    let mut c = ServerConfig::ephemeral(data_dir);
    c.queue_limit = 10_000_000;
    c.rate_limits.enqueue_per_sec_per_session = 10_000_000;
    c.rate_limits.enqueue_per_sec_per_address = 10_000_000;
    c.rate_limits.logins_per_min_per_address = 10_000_000;
    c.rate_limits.claims_per_min_per_requester = 10_000_000;
    c.rate_limits.claims_per_min_per_target = 10_000_000;
    c.rate_limits.claims_per_min_per_device = 10_000_000;
    // Every simulated client comes from 127.0.0.1: the per-address cap would
    // refuse all but the first thousand.
    c.limits.admission.connections = 1_000_000;
    c.limits.admission.connections_per_address = 1_000_000;
    c.limits.groups_per_device = u64::MAX;
    // A Welcome carries the ratchet tree: ~1.4 KB per member on the X-Wing suite,
    // so past ~600 members it exceeds the default 1 MiB.
    c.max_payload = 8 * 1024 * 1024;
    c
}

impl Target {
    /// Starts a node in this process on a temporary data directory, its
    /// tables there or in the PostgreSQL database `store`.
    pub fn in_process(store: Option<String>) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        let mut config = load_test_config(dir.path().to_path_buf());
        config.store = store;
        Target::start(config, Some(dir))
    }

    /// Starts a node in this process with `config`.
    pub fn start(config: ServerConfig, dir: Option<tempfile::TempDir>) -> anyhow::Result<Target> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(NODE_THREAD)
            .enable_all()
            .build()?;
        let server = runtime.block_on(Server::bind(config.clone()))?;
        let addr = server.local_addr();
        let store = Some(server.context().store.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let _ = server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Target {
            addr,
            ca_cert: config.data_dir.join(quicnprotochat_wire::tls::CERT_FILE),
            node: Some(InProcessNode {
                runtime,
                stop: Some(stop),
                task: Some(task),
                config,
                store,
                _dir: dir,
            }),
            external_pid: None,
        })
    }

    /// A node that runs elsewhere.
    pub fn external(addr: SocketAddr, ca_cert: PathBuf) -> Target {
        Target {
            addr,
            ca_cert,
            node: None,
            external_pid: None,
        }
    }

    /// Names the process of an external node on this machine, so that its CPU
    /// time is measured (the node against the server, as `redis-benchmark`
    /// measures Redis).
    pub fn with_pid(mut self, pid: Option<u32>) -> Target {
        self.external_pid = pid;
        self
    }

    /// CPU seconds the node has used so far: its threads when it runs in this
    /// process, the whole process when it is external with a known pid, `None`
    /// otherwise.
    pub(crate) fn node_cpu_seconds(&self) -> Option<f64> {
        match (&self.node, self.external_pid) {
            (Some(_), _) => Some(sys::thread_cpu_seconds(&sys::NODE_THREADS)),
            (None, Some(pid)) => sys::process_cpu_seconds(pid),
            (None, None) => None,
        }
    }

    /// Whether the node runs in this process (then it can be restarted).
    pub fn is_in_process(&self) -> bool {
        self.node.is_some()
    }

    /// Stops the in-process node gracefully and starts it again on the same data;
    /// returns the time from start until it is bound and serving.
    pub fn restart(&mut self) -> anyhow::Result<std::time::Duration> {
        let node = self
            .node
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("cannot restart an external node"))?;
        node.shutdown();
        let started = std::time::Instant::now();
        let server = node.runtime.block_on(Server::bind(node.config.clone()))?;
        self.addr = server.local_addr();
        node.store = Some(server.context().store.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        node.task = Some(node.runtime.spawn(async move {
            let _ = server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        }));
        node.stop = Some(stop);
        Ok(started.elapsed())
    }

    /// The store writer and inbox registry of a fresh store, for the `store`
    /// scenario (no network).
    pub fn node_runtime(&self) -> Option<&tokio::runtime::Runtime> {
        self.node.as_ref().map(|n| &n.runtime)
    }
}

impl InProcessNode {
    fn shutdown(&mut self) {
        self.store = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(node) = self.node.as_mut() {
            node.shutdown();
        }
    }
}
