//! The client commands of the CLI, each a function over a connection.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::client::{ClientError, ClientState, NodeConnection};
use crate::tls;

/// Where and how a client connects; from global flags and environment.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub server: String,
    pub ca_cert: PathBuf,
    pub state_dir: PathBuf,
    pub auth_token: Option<String>,
}

/// Errors of a command, each printable as one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid server address {0:?}: expected HOST:PORT")]
    BadServer(String),
    #[error("cannot read the server certificate {path}: {reason} (pass --ca-cert or QPC_CA_CERT)")]
    CaCert { path: PathBuf, reason: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    State(#[from] crate::client::state::StateError),
}

impl ClientOptions {
    fn server_addr(&self) -> Result<SocketAddr, CommandError> {
        use std::net::ToSocketAddrs;
        self.server
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| CommandError::BadServer(self.server.clone()))
    }

    /// Opens a pinned connection to the configured server.
    pub async fn connect(&self) -> Result<NodeConnection, CommandError> {
        let addr = self.server_addr()?;
        let pinned = tls::read_pinned_cert(&self.ca_cert).map_err(|e| CommandError::CaCert {
            path: self.ca_cert.clone(),
            reason: match e {
                tls::TlsError::Read { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        Ok(NodeConnection::connect(addr, pinned).await?)
    }
}

/// `health`: one line with status, version and uptime.
pub async fn health(opts: &ClientOptions) -> Result<String, CommandError> {
    let conn = opts.connect().await?;
    let h = conn.health().await?;
    conn.close().await;
    Ok(format!(
        "{} (version {}, uptime {}s)",
        h.status,
        h.version,
        h.uptime.as_secs()
    ))
}

/// `ping`: the round-trip time.
pub async fn ping(opts: &ClientOptions) -> Result<String, CommandError> {
    let conn = opts.connect().await?;
    let rtt = conn.ping().await?;
    conn.close().await;
    Ok(format!(
        "pong from {} in {:.3} ms",
        opts.server,
        rtt.as_secs_f64() * 1000.0
    ))
}

/// `whoami`: authenticates with the profile's identity and shows what the node sees.
pub async fn whoami(opts: &ClientOptions) -> Result<String, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let conn = opts.connect().await?;
    let session = conn
        .authenticate(&identity, opts.auth_token.as_deref())
        .await?;
    let me = session.whoami().await?;
    conn.close().await;
    let mut line = format!("identity {}", me.identity_key.to_hex());
    if !me.username.is_empty() {
        line = format!("{} ({line})", me.username);
    }
    Ok(line)
}
