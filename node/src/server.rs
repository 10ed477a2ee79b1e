//! The node in server mode: binds the QUIC endpoint, starts the actors, serves
//! connections until told to shut down.
//!
//! Entry point for tests and the binary alike: [`Server::bind`] then
//! [`Server::run`], so tests start a real node on port 0 in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use quicnprotochat_actors::auth::{AuthError, AuthService};
use quicnprotochat_actors::connection::{self, ConnectionInfo, NodeContext};
use quicnprotochat_actors::core::admission::{ConnectionGate, ConnectionSlot};
use quicnprotochat_actors::core::budget::NodeBudget;
use quicnprotochat_actors::core::inbox::InboxLimits;
use quicnprotochat_actors::core::rate::RateLimits;
use quicnprotochat_actors::disk::DiskRoom;
use quicnprotochat_actors::group::{GroupRegistry, GroupSettings};
use quicnprotochat_actors::inbox::{InboxRegistry, InboxSettings};
use quicnprotochat_actors::store::StoreWriter;
use quicnprotochat_actors::store::postgres::{News, PgStore};
use quicnprotochat_actors::store::{ServerStore, Store, StoreError, StoreOptions};
use quicnprotochat_actors::telemetry;
use quicnprotochat_crypto::private_fs::private_dir;
use quicnprotochat_crypto::token::TokenHash;
use quicnprotochat_crypto::{CHANNEL_BINDING_LEN, EXPORTER_LABEL};
use quicnprotochat_wire::IdentityKey;
use quicnprotochat_wire::limits::reader_options;
use tokio::sync::mpsc;

use crate::config::ServerConfig;
use quicnprotochat_wire::tls::{self, TlsError};

/// Name of the node's database file inside the data directory.
pub const DB_FILE: &str = "node.redb";

/// How long a new connection may take to open its RPC stream.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections' tasks to end. With the
/// endpoint's last wait below, well within `quicnprotochat_client::shutdown::DEADLINE`: a
/// signalled node stops gracefully in time whatever its clients do.
const CONNECTION_DRAIN: Duration = Duration::from_millis(750);
/// How long shutdown waits for the endpoint to send its last close frames.
const ENDPOINT_IDLE_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
/// Why a node could not start.
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    /// The data folder could not be created or made owner-only.
    DataDir {
        /// The file or folder concerned.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// The TLS material could not be had.
    Tls(#[from] TlsError),
    #[error("cannot open the node database: {0}")]
    /// The database could not be opened.
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    /// The address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("cannot start the authentication service: {0}")]
    /// The Authentication Service could not start.
    Auth(#[from] AuthError),
    #[error("cannot start the node's actors: {0}")]
    /// An actor could not start (why).
    Actors(String),
    #[error("cannot start a thread: {0}")]
    /// A thread could not start.
    Thread(std::io::Error),
}

/// A bound, ready node.
pub struct Server {
    endpoint: quinn::Endpoint,
    /// Threads serving connections' RPC systems.
    rpc_threads: usize,
    gate: ConnectionGate,
    metrics: Option<tokio::net::TcpListener>,
    ctx: Arc<NodeContext>,
    writer: StoreWriter,
    writer_thread: std::thread::JoinHandle<()>,
    /// Follows what other nodes sharing a PostgreSQL store write.
    news: Option<tokio::task::JoinHandle<()>>,
    connections: ConnectionSettings,
}

/// What every connection's server loop needs of the configuration.
#[derive(Debug, Clone, Copy)]
struct ConnectionSettings {
    /// Largest payload (the reader limits follow it).
    max_payload: usize,
    /// A connection whose replies stay unwritten this long is closed.
    reply_stall: Duration,
}

impl Server {
    /// Opens the store, starts the actors and binds the QUIC endpoint.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        // Listen first: a node that cannot bind has written nothing (no data
        // folder, no generated key) when it says so.
        let socket =
            std::net::UdpSocket::bind(config.listen).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
            None => None,
        };
        // Install the recorder before anything records (the writer sets the depth
        // gauge as it starts).
        if metrics.is_some() {
            crate::metrics::install();
        }
        // Owner-only: the database and the TLS key inside hold secrets.
        private_dir(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let material = tls::load_or_generate(
            &config.data_dir,
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
        )?;
        let store = match &config.store {
            Some(url) => Store::Postgres(Box::new(PgStore::open(url).await?)),
            None => Store::Redb(ServerStore::open(
                &config.data_dir.join(DB_FILE),
                StoreOptions {
                    cache_bytes: config.limits.store_cache_bytes,
                    ..StoreOptions::default()
                },
            )?),
        };
        tracing::info!(backend = store.backend(), "store opened");
        // A store in PostgreSQL lives on that server's disk, not watched here.
        let disk = match &store {
            Store::Redb(_) => DiskRoom::watch(&config.data_dir, config.limits.min_free_disk_bytes),
            Store::Postgres(_) => DiskRoom::default(),
        };
        let (writer, writer_thread) =
            StoreWriter::start_for(&store).map_err(ServerError::Thread)?;
        let limits = InboxLimits {
            queue_limit: config.queue_limit,
            max_payload: config.max_payload,
        };
        let registry = InboxRegistry::start(
            writer.clone(),
            InboxSettings {
                limits,
                idle_after: config.idle_inbox_after,
                long_polls: config.limits.long_polls_per_inbox as usize,
                live_actors: config.limits.live_inboxes as usize,
            },
        )
        .await
        .map_err(|e| ServerError::Actors(e.to_string()))?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls::server_config(material)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let auth = Arc::new(
            AuthService::open(
                store.clone(),
                writer.clone(),
                config.limits.devices_per_account,
                config.limits.session_idle,
            )
            .await?,
        );
        let directory = {
            let auth = auth.clone();
            Arc::new(move |inbox: &IdentityKey| auth.accepts_inbox(inbox))
        };
        let groups = GroupRegistry::start(
            registry.clone(),
            writer.clone(),
            GroupSettings {
                idle_after: config.idle_inbox_after,
                live_actors: config.limits.live_inboxes as usize,
                groups_per_device: config.limits.groups_per_device,
                group_info_bytes_per_device: config.limits.group_info_bytes_per_device,
                disk: disk.clone(),
            },
            directory,
        )
        .await
        .map_err(|e| ServerError::Actors(e.to_string()))?;
        let ctx = Arc::new(NodeContext {
            registry,
            groups,
            store,
            writer: writer.clone(),
            auth,
            rates: RateLimits::new(config.rate_limits),
            sealed_sender: config.sealed_sender,
            auth_token: config
                .auth_token
                .as_deref()
                .map(|t| TokenHash::of(t.as_bytes())),
            operator_token: config
                .operator_token
                .as_deref()
                .map(|t| TokenHash::of(t.as_bytes())),
            limits,
            budget: NodeBudget::new(config.limits.budget),
            disk,
            started: Instant::now(),
        });
        ctx.collect_garbage().await;
        let news = match &ctx.store {
            Store::Postgres(pg) => Some(follow_other_nodes(pg.listen().await?, &ctx)),
            Store::Redb(_) => None,
        };
        Ok(Server {
            news,
            rpc_threads: config.rpc_threads,
            gate: ConnectionGate::new(config.limits.admission),
            endpoint,
            metrics,
            ctx,
            writer,
            writer_thread,
            connections: ConnectionSettings {
                max_payload: config.max_payload,
                reply_stall: config.limits.reply_stall,
            },
        })
    }

    /// The address the endpoint is bound to (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("bound endpoint has an address")
    }

    /// What every connection shares (registries, store): for in-process tests and
    /// chaos hooks.
    pub fn context(&self) -> Arc<NodeContext> {
        self.ctx.clone()
    }

    /// The metrics endpoint's address, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets the writer
    /// finish every commit in flight and closes the database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        // capnp-rpc is !Send: a connection's RPC system stays on the thread it
        // starts on. Several such threads share the connections (round robin), so
        // one busy connection slows only its thread's share.
        let settings = self.connections;
        let mut rpc_threads = Vec::new();
        let mut conn_txs = Vec::new();
        for i in 0..self.rpc_threads {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = self.ctx.clone();
            rpc_threads.push(
                std::thread::Builder::new()
                    .name(format!("rpc-{i}"))
                    .spawn(move || rpc_thread_main(ctx, rx, settings))
                    .map_err(ServerError::Thread)?,
            );
            conn_txs.push(tx);
        }
        let next_thread = std::sync::atomic::AtomicUsize::new(0);

        let accept = async {
            while let Some(incoming) = self.endpoint.accept().await {
                // Capped before the handshake: a refusal costs one packet.
                let slot = match self.gate.admit(incoming.remote_address().ip()) {
                    Ok(slot) => slot,
                    Err(full) => {
                        metrics::counter!(telemetry::CONNECTIONS_REFUSED_TOTAL, "cap" => full.cap())
                            .increment(1);
                        tracing::debug!(remote = %incoming.remote_address(), %full, "connection refused");
                        incoming.refuse();
                        continue;
                    }
                };
                let i = next_thread.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let conn_tx = conn_txs[i % conn_txs.len()].clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            metrics::counter!(telemetry::CONNECTIONS_TOTAL).increment(1);
                            let _ = conn_tx.send((conn, slot));
                        }
                        Err(e) => tracing::debug!(error = %e, "handshake failed"),
                    }
                });
            }
        };
        // Rate limiters remember recent keys only.
        let ctx = self.ctx.clone();
        let forget = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for second in 1u64.. {
                tick.tick().await;
                metrics::gauge!(telemetry::BYTES_IN_FLIGHT)
                    .set(ctx.budget.bytes_in_flight() as f64);
                if second % 10 == 0 {
                    ctx.disk.refresh();
                }
                if second % 60 != 0 {
                    continue;
                }
                ctx.rates.forget_quiet();
                if second % 3600 == 0 {
                    ctx.collect_garbage().await;
                }
                // One line a minute, however many: a flood must not flood the log.
                let refused = ctx.rates.take_refused();
                if refused > 0 {
                    tracing::warn!(
                        refused,
                        "rate limiting: requests refused in the last minute"
                    );
                }
            }
        };
        let metrics = async {
            match self.metrics {
                Some(listener) => crate::metrics::serve(listener, crate::metrics::install()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = forget => {}
            _ = metrics => {}
            _ = shutdown => {}
        }
        tracing::info!("shutting down");
        self.endpoint.close(0u32.into(), b"node shutting down");
        drop(conn_txs);
        let _ = tokio::task::spawn_blocking(move || {
            for t in rpc_threads {
                let _ = t.join();
            }
        })
        .await;
        if let Some(news) = &self.news {
            news.abort();
        }
        self.ctx.groups.stop().await;
        self.ctx.registry.stop().await;
        self.writer.shutdown().await;
        let writer_thread = self.writer_thread;
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
        let _ = tokio::time::timeout(ENDPOINT_IDLE_WAIT, self.endpoint.wait_idle()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Acts on what other nodes sharing the database wrote: wakes the long-polls
/// of inboxes that got messages, reloads the device and session directory when
/// accounts changed.
fn follow_other_nodes(
    mut news: tokio::sync::mpsc::Receiver<News>,
    ctx: &Arc<NodeContext>,
) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        while let Some(n) = news.recv().await {
            let Some(ctx) = ctx.upgrade() else { break };
            match n {
                News::Inbox(inbox) => {
                    ctx.registry.reload(inbox).await;
                }
                News::Accounts => {
                    if let Err(e) = ctx.auth.reload_directory().await {
                        tracing::warn!(error = %e, "could not reload the device directory");
                    }
                }
            }
        }
    })
}

/// Binds and serves; prints `listening on ADDR` once ready.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = Server::bind(config).await?;
    println!("listening on {}", server.local_addr());
    server.run(shutdown).await
}

fn rpc_thread_main(
    ctx: Arc<NodeContext>,
    mut conns: mpsc::UnboundedReceiver<(quinn::Connection, ConnectionSlot)>,
    settings: ConnectionSettings,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the RPC runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut tasks = Vec::new();
        // Holds at most one entry per open connection (the gate caps them).
        while let Some((conn, slot)) = conns.recv().await {
            tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
            tasks.push(tokio::task::spawn_local(serve_connection(
                ctx.clone(),
                conn,
                slot,
                settings,
            )));
        }
        // The endpoint is closed: every connection ends; wait for their tasks, but
        // not forever: a connection whose I/O can no longer be driven (the
        // endpoint's driver may already be gone when the process is exiting) must
        // not hold up shutdown. Whatever a task had acknowledged is durable already.
        let drained = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(CONNECTION_DRAIN, drained)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after shutdown; dropping them");
        }
    });
}

/// Serves one connection: its single bidirectional stream carries Cap'n Proto RPC.
/// Serves one connection; its slot is freed when it ends.
async fn serve_connection(
    ctx: Arc<NodeContext>,
    conn: quinn::Connection,
    slot: ConnectionSlot,
    settings: ConnectionSettings,
) {
    metrics::gauge!(telemetry::CONNECTIONS_OPEN).increment(1.0);
    serve_rpc(ctx, conn, settings).await;
    metrics::gauge!(telemetry::CONNECTIONS_OPEN).decrement(1.0);
    drop(slot);
}

async fn serve_rpc(ctx: Arc<NodeContext>, conn: quinn::Connection, settings: ConnectionSettings) {
    let remote = conn.remote_address();
    let mut channel_binding = [0u8; CHANNEL_BINDING_LEN];
    if conn
        .export_keying_material(&mut channel_binding, EXPORTER_LABEL, b"")
        .is_err()
    {
        conn.close(1u32.into(), b"no keying material");
        return;
    }
    let (send, recv) = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection ended before opening a stream");
            return;
        }
        Err(_) => {
            conn.close(2u32.into(), b"no stream opened");
            return;
        }
    };
    // Requests are read only while replies can be written, and reply bytes
    // count against the connection's budget until written (see `backpressure`).
    let budget = ctx.budget.connection();
    let (recv, send, congestion) = crate::backpressure::couple(recv, send, budget.clone());
    let network = twoparty::VatNetwork::new(
        recv,
        send,
        Side::Server,
        reader_options(settings.max_payload),
    );
    let bootstrap = connection::bootstrap(
        ctx,
        ConnectionInfo {
            channel_binding,
            remote,
        },
        budget,
    );
    let rpc = RpcSystem::new(Box::new(network), Some(bootstrap.client));
    // Replies nobody reads for this long: the peer is gone or hostile.
    let stalled = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(settings.reply_stall));
        loop {
            tick.tick().await;
            if congestion
                .stuck_for()
                .is_some_and(|d| d >= settings.reply_stall)
            {
                return;
            }
        }
    };
    tokio::select! {
        outcome = rpc => {
            if let Err(e) = outcome {
                // Malformed framing or a vanished peer: drop this connection only.
                tracing::debug!(%remote, error = %e, "connection closed with error");
                // capnp-rpc has queued an Abort telling the peer why; give it a
                // moment to arrive before the connection (and anything unsent) is
                // torn down.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(3u32.into(), b"protocol error");
            }
        }
        () = stalled => {
            metrics::counter!(telemetry::STALLED_CONNECTIONS_TOTAL).increment(1);
            tracing::info!(
                %remote,
                stalled_secs = settings.reply_stall.as_secs(),
                "closing a connection whose replies have not been read"
            );
            conn.close(4u32.into(), b"replies unread");
        }
    }
}
