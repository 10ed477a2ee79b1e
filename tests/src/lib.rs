//! Helpers for end-to-end tests and the `loadtest` harness (`load`): a real node (QUIC, TLS, Cap'n Proto, fsync'd redb)
//! started in-process on an ephemeral port, and clients connected to it.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod load;
pub mod scrape;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quicnprotochat_actors::connection::NodeContext;

use quicnprotochat::config::ServerConfig;
use quicnprotochat::server::Server;
use quicnprotochat_client::actors::NodeAddress;
use quicnprotochat_client::commands::enroll;
use quicnprotochat_client::messenger::Messenger;
use quicnprotochat_client::{ClientError, ClientState, NodeConnection, SessionHandle};
use quicnprotochat_crypto::Identity;
use quicnprotochat_wire::tls;
use tokio::sync::oneshot;

/// A node running in this process on 127.0.0.1 with a port of its own.
pub struct TestNode {
    /// Where clients reach it.
    pub addr: SocketAddr,
    /// The Prometheus endpoint, when the configuration asked for one.
    pub metrics_addr: Option<SocketAddr>,
    /// Its data folder.
    pub data_dir: PathBuf,
    /// What it was started with (restarts reuse it).
    pub config: ServerConfig,
    /// Dropped on stop: it holds the database open.
    ctx: Option<Arc<NodeContext>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Binds a node for `config`. A node restarted in this process at its old
/// address may find the address still held for a moment: the stopped node's QUIC
/// endpoint driver lets go of its socket only after the node's `run` returned.
/// That is waited out (up to 5 s); any other failure is the test's.
async fn bind_when_free(config: &ServerConfig) -> Server {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Server::bind(config.clone()).await {
            Ok(server) => return server,
            Err(quicnprotochat::server::ServerError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && config.listen.port() != 0
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("node binds: {e:?}"),
        }
    }
}

/// The environment variable that runs the suites against PostgreSQL: the URL
/// of a server's maintenance database (`scripts/start-postgres.sh` prints one).
pub const TEST_STORE_VAR: &str = "QPC_TEST_STORE";

/// Whether the suites run against PostgreSQL (see [`TEST_STORE_VAR`]).
pub fn test_store_url() -> Option<String> {
    std::env::var(TEST_STORE_VAR).ok().filter(|u| !u.is_empty())
}

/// The store a test node uses: the redb file in its data folder, or, with
/// [`TEST_STORE_VAR`] set, a PostgreSQL database of its own named after its
/// data folder (created on first start, so a restart finds its tables again).
/// A configuration that names a store keeps it.
pub async fn with_test_store(mut config: ServerConfig) -> ServerConfig {
    let Some(url) = test_store_url() else {
        return config;
    };
    if config.store.is_some() {
        return config;
    }
    let name = format!("qpc_test_{:016x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        config.data_dir.hash(&mut h);
        h.finish()
    });
    config.store = Some(create_test_database(&url, &name).await);
    config
}

/// Creates database `name` on the server of `url` unless it exists; returns
/// its URL.
pub async fn create_test_database(url: &str, name: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{TEST_STORE_VAR}: cannot reach PostgreSQL: {e}"));
    tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("pg_database readable")
        .is_some();
    if !exists {
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("test database created");
    }
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{name}")
}

impl TestNode {
    /// Starts a node with default limits on `data_dir`.
    pub async fn start(data_dir: &Path) -> TestNode {
        TestNode::start_with(ServerConfig::ephemeral(data_dir)).await
    }

    /// Starts a node with the given configuration (its `listen` should be port 0).
    pub async fn start_with(config: ServerConfig) -> TestNode {
        let config = with_test_store(config).await;
        let server = bind_when_free(&config).await;
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let ctx = server.context();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("node runs");
        });
        TestNode {
            addr,
            metrics_addr,
            data_dir: config.data_dir.clone(),
            config,
            ctx: Some(ctx),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Gracefully stops the node and waits until its database is closed.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        self.ctx = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task ends cleanly");
        }
    }

    /// Restarts the node on the same data directory and configuration (new port).
    pub async fn restart(mut self) -> TestNode {
        self.stop_inner().await;
        TestNode::start_with(self.config.clone()).await
    }

    /// How many group actors are alive in the node.
    pub async fn live_group_actors(&self) -> usize {
        self.ctx
            .as_ref()
            .expect("node running")
            .groups
            .live_actors()
            .await
    }

    /// Chaos hook: makes the actor of `group_id` panic, as a bug would.
    pub async fn crash_group(&self, group_id: &[u8]) {
        let groups = &self.ctx.as_ref().expect("node running").groups;
        let before = groups.restarts();
        groups.crash(group_id).await.expect("group actor reachable");
        // Let the supervisor see the failure before the next call.
        while groups.restarts() == before {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// What the node's store holds for `inbox` (a look behind the wire, for
    /// checking what was deleted).
    pub async fn stored(
        &self,
        inbox: &quicnprotochat_wire::IdentityKey,
    ) -> Vec<quicnprotochat_wire::Envelope> {
        self.ctx
            .as_ref()
            .expect("node running")
            .store
            .fetch(*inbox, 0, usize::MAX, usize::MAX)
            .await
            .expect("store readable")
    }

    /// Every value the node's database holds, as bytes laid end to end (to
    /// look for what must not be stored): the redb file, or each value of
    /// each row of each table on PostgreSQL.
    pub async fn database_bytes(&self) -> Vec<u8> {
        let Some(url) = &self.config.store else {
            return std::fs::read(self.data_dir.join(quicnprotochat::server::DB_FILE))
                .expect("database file readable");
        };
        use tokio_postgres::types::Type;
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL reachable");
        tokio::spawn(connection);
        let tables = client
            .query(
                "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = 'public'",
                &[],
            )
            .await
            .expect("tables listed");
        let mut out = Vec::new();
        for t in tables {
            let table: String = t.get(0);
            for row in client
                .query(&format!("SELECT * FROM {table}"), &[])
                .await
                .expect("table readable")
            {
                for (i, c) in row.columns().iter().enumerate() {
                    match *c.type_() {
                        Type::BYTEA => {
                            out.extend(row.get::<_, Option<Vec<u8>>>(i).unwrap_or_default())
                        }
                        Type::TEXT | Type::VARCHAR => out.extend(
                            row.get::<_, Option<String>>(i)
                                .unwrap_or_default()
                                .into_bytes(),
                        ),
                        _ => {}
                    }
                    out.push(0);
                }
            }
        }
        out
    }

    /// What every connection of the node shares: for chaos hooks that do half of
    /// an operation, as a crash would.
    pub fn context(&self) -> Arc<NodeContext> {
        self.ctx.as_ref().expect("node running").clone()
    }

    /// What calls in flight hold, node-wide (counters for memory-bound tests).
    pub fn budget(&self) -> quicnprotochat_actors::core::budget::NodeBudget {
        self.ctx.as_ref().expect("node running").budget.clone()
    }

    /// Opens a raw pinned QUIC connection, writes `bytes` on its stream and keeps
    /// our side open (the node must act on what it got, not on our FIN); returns
    /// whether the node closed the stream or connection within `wait`.
    pub async fn write_raw(&self, bytes: &[u8], wait: std::time::Duration) -> bool {
        let pinned = tls::read_pinned_cert(&self.cert_path()).expect("node wrote its certificate");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
        endpoint.set_default_client_config(tls::client_config(pinned).expect("client config"));
        let conn = endpoint
            .connect(self.addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        let _ = send.write_all(bytes).await;
        let closed = tokio::time::timeout(wait, async {
            let mut buf = [0u8; 1024];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        })
        .await
        .is_ok();
        conn.close(0u32.into(), b"");
        endpoint.wait_idle().await;
        closed
    }

    /// The certificate clients pin.
    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.join(tls::CERT_FILE)
    }

    /// Opens a pinned connection. Must run on a `LocalSet`.
    pub async fn connect(&self) -> Result<NodeConnection, ClientError> {
        let pinned = tls::read_pinned_cert(&self.cert_path()).expect("node wrote its certificate");
        NodeConnection::connect(self.addr, pinned).await
    }

    /// Connects and authenticates `identity`. Must run on a `LocalSet`.
    pub async fn session(&self, identity: &Identity) -> (NodeConnection, SessionHandle) {
        let conn = self.connect().await.expect("connects");
        let session = conn
            .authenticate(identity, self.config.auth_token.as_deref())
            .await
            .expect("authenticates");
        (conn, session)
    }
}

/// A registered user with one device and its own profile, ready for groups: its
/// messenger is the client's actor tree, on a connection of its own.
pub struct Person {
    /// The client actor tree of the person's profile.
    pub messenger: Messenger,
    /// The device's identity.
    pub identity: Identity,
    /// The account password.
    pub password: String,
    /// The profile directory (kept for the person's lifetime).
    pub dir: tempfile::TempDir,
}

impl TestNode {
    /// How clients reach this node (reconnecting for up to 10 s).
    pub fn address(&self) -> NodeAddress {
        NodeAddress {
            addr: self.addr,
            trust: tls::read_pinned_cert(&self.cert_path())
                .expect("node wrote its certificate")
                .into(),
            auth_token: self.config.auth_token.clone(),
            reconnect_patience: std::time::Duration::from_secs(10),
            endpoint: None,
            connect_within: None,
            fail_fast: None,
        }
    }

    /// Registers `username` (password "pw-USERNAME") on a fresh profile, publishes
    /// its keys, and starts its messenger. Must run on a `LocalSet`.
    pub async fn person(&self, username: &str) -> Person {
        let conn = self.connect().await.expect("connects");
        Person::enroll(conn, self.address(), username)
            .await
            .expect("registers")
    }
}

impl Person {
    /// Registers `username` (password "pw-USERNAME") over `conn` on a fresh
    /// profile in a temporary directory, publishes its keys, closes `conn` and
    /// starts the messenger against `address`.
    pub async fn enroll(
        conn: NodeConnection,
        address: NodeAddress,
        username: &str,
    ) -> anyhow::Result<Person> {
        Person::enroll_with_cache(
            conn,
            address,
            username,
            quicnprotochat_client::state::CACHE_BYTES,
        )
        .await
    }

    /// [`Person::enroll`] with a profile page cache of `cache_bytes`.
    pub async fn enroll_with_cache(
        conn: NodeConnection,
        address: NodeAddress,
        username: &str,
        cache_bytes: usize,
    ) -> anyhow::Result<Person> {
        let dir = tempfile::tempdir()?;
        let state = ClientState::open_with_cache(dir.path(), cache_bytes)?;
        let identity = state.identity()?;
        let password = format!("pw-{username}");
        enroll(
            &state,
            &conn,
            username,
            &password,
            address.auth_token.as_deref(),
        )
        .await?;
        conn.close().await;
        let messenger = Messenger::start(state, address).await?;
        Ok(Person {
            messenger,
            identity,
            password,
            dir,
        })
    }

    /// `username` (password "pw-USERNAME") logging in on a fresh profile: a new
    /// device of the account, or one whose profile was lost. Publishes its keys,
    /// as the `login` command does, and starts its messenger. Must run on a
    /// `LocalSet`.
    pub async fn log_in_again(node: &TestNode, username: &str) -> Person {
        let dir = tempfile::tempdir().expect("temp dir");
        let password = format!("pw-{username}");
        let opts = quicnprotochat_client::commands::ClientOptions {
            server: node.addr.to_string(),
            ca_cert: node.cert_path(),
            state_dir: dir.path().to_path_buf(),
            auth_token: node.config.auth_token.clone(),
            json: false,
            ca_bundle: None,
            server_name: None,
        };
        quicnprotochat_client::commands::login(&opts, username, &password)
            .await
            .expect("logs in");
        let state = ClientState::open(dir.path()).expect("profile opens");
        let identity = state.identity().expect("identity");
        let messenger = Messenger::start(state, node.address())
            .await
            .expect("messenger starts");
        Person {
            messenger,
            identity,
            password,
            dir,
        }
    }

    /// Stops this person's messenger and opens the profile again, as a restarted
    /// client process would (reaching `node`, which may have restarted too).
    pub async fn restart(self, node: &TestNode) -> Person {
        let Person {
            messenger,
            identity,
            password,
            dir,
        } = self;
        messenger.close().await;
        let state = ClientState::open(dir.path()).expect("profile reopens");
        let messenger = Messenger::start(state, node.address())
            .await
            .expect("messenger starts");
        Person {
            messenger,
            identity,
            password,
            dir,
        }
    }
}

/// Applies the inbox; returns every line not shown yet (also those produced
/// while an earlier operation caught up) and marks them shown.
pub async fn pull_shown(m: &mut Messenger) -> Vec<String> {
    m.pull(std::time::Duration::ZERO).await.expect("pull");
    let unread = m.unread().unwrap();
    let keys: Vec<_> = unread.iter().map(|(k, _)| *k).collect();
    m.mark_shown(&keys).unwrap();
    unread.into_iter().map(|(_, l)| l.display()).collect()
}

/// Every member sees `group` at the same epoch with the same epoch
/// authenticator and the same members: one group, no fork. Every end-to-end
/// group test ends with it (after each member's last pull).
pub async fn assert_no_fork(people: &[&Person], group: &str) {
    let mut views = Vec::new();
    for p in people {
        views.push(
            p.messenger
                .group(group)
                .await
                .expect("member has the group"),
        );
    }
    for v in &views[1..] {
        assert_eq!(v.epoch, views[0].epoch, "same epoch");
        assert_eq!(
            v.epoch_authenticator, views[0].epoch_authenticator,
            "same epoch authenticator: no fork"
        );
        assert_eq!(v.members.len(), views[0].members.len(), "same members");
    }
}

/// alice and bob, both members of group "g" (alice created it).
pub async fn alice_and_bob_in_g(node: &TestNode) -> (Person, Person) {
    let mut alice = node.person("alice").await;
    let mut bob = node.person("bob").await;
    alice
        .messenger
        .create_group("g", quicnprotochat_crypto::mls::Suite::Classic)
        .await
        .unwrap();
    alice.messenger.invite("g", &["bob".into()]).await.unwrap();
    pull_shown(&mut bob.messenger).await;
    (alice, bob)
}

/// An MLS commit as the node sees one in `commit(…, mlsCommit)`: a PrivateMessage
/// (RFC 9420 §6.3) whose clear header names `group_id` and `epoch`, with opaque
/// bytes where sender data and content are encrypted. For tests of the node's
/// fence, which cannot decrypt (and never tries) what it fences.
pub fn mls_commit(group_id: &[u8], epoch: u64) -> Vec<u8> {
    fn opaque(out: &mut Vec<u8>, bytes: &[u8]) {
        // MLS variable-length vector: a 1, 2 or 4 byte length prefix.
        let len = bytes.len();
        if len < 1 << 6 {
            out.push(len as u8);
        } else if len < 1 << 14 {
            out.extend_from_slice(&((len as u16) | 0x4000).to_be_bytes());
        } else {
            out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
        }
        out.extend_from_slice(bytes);
    }
    let mut out = vec![0, 1, 0, 2]; // mls10, mls_private_message
    opaque(&mut out, group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(3); // content type: commit
    opaque(&mut out, b""); // authenticated data
    opaque(&mut out, &[0x5a; 32]); // encrypted sender data
    opaque(&mut out, &[0xa5; 64]); // ciphertext
    out
}

/// Runs `f` on a `LocalSet` (client objects are `!Send`).
pub async fn local<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// xorshift64*: the seeded tests' source of every choice, so a failing seed
/// replays its run.
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `state` as it is (made odd, never zero).
    pub fn new(state: u64) -> Rng {
        Rng(state | 1)
    }

    /// A generator for `seed`, mixed so that neighbouring seeds differ at once.
    pub fn seeded(seed: u64) -> Rng {
        Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The next number.
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
