//! A connection to a node and typed calls on it.
//!
//! capnp-rpc is `!Send`: a [`NodeConnection`] and its sessions must be used on a
//! `tokio::task::LocalSet` (the CLI runs everything on one).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_crypto::opaque;
use quicnprotochat_crypto::{CHANNEL_BINDING_LEN, EXPORTER_LABEL, Identity, auth_transcript};
use quicnprotochat_wire::error::CallError;
use quicnprotochat_wire::limits::reader_options;
use quicnprotochat_wire::node_capnp::{node, session};
use quicnprotochat_wire::types::read_envelopes;
use quicnprotochat_wire::{Envelope, ErrorCode, IdentityKey, WireError};

use quicnprotochat_wire::tls::{self, ServerTrust, TlsError};

mod keys;
mod operator;
mod push;
mod reply_pause;
mod session_handle;

pub use keys::{ClaimedKeyPackage, KeyDirectory, KeyPackageTarget};
pub use operator::{AccountEntry, OperatorHandle};
pub use push::{Applied, Pushed};
use reply_pause::PausableReader;
pub use reply_pause::ReplyPause;
pub use session_handle::{CommitBodies, DirectoryEntry, SendOutcome, SessionHandle, WhoAmI};

/// Largest message the client accepts from a node (the node's own payload limit
/// may be configured up to 64 MiB).
const CLIENT_READ_LIMIT: usize = 64 * 1024 * 1024;

/// What can go wrong on the client side, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    /// The certificate could not be used.
    Tls(#[from] TlsError),
    #[error("cannot reach the server at {addr}: {reason}")]
    /// The node could not be reached.
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    #[error(
        "the server at {addr} does not present a certificate this client trusts (the pinned one, or with --ca-bundle one issued for the node's name)"
    )]
    /// The node showed another certificate than the pinned one, or (with a CA
    /// bundle) one not issued by it for the node's name.
    CertificateMismatch {
        /// The address.
        addr: SocketAddr,
    },
    #[error("the server refused: {0}")]
    /// The node refused the call (typed).
    Refused(WireError),
    #[error("connection to the server failed: {0}")]
    /// The connection failed mid-call.
    Transport(String),
    #[error("the server sent an invalid answer: {0}")]
    /// The node answered something unexpected.
    Protocol(String),
    /// The profile has no usable session (never logged in, or the session ended).
    #[error("{0}")]
    Session(String),
}

impl ClientError {
    /// The node's refusal code, if this is a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(w) => Some(w.code),
            _ => None,
        }
    }
}

impl From<capnp::Error> for ClientError {
    fn from(e: capnp::Error) -> Self {
        match CallError::from(e) {
            CallError::Refused(w) => ClientError::Refused(w),
            CallError::Transport(t) => ClientError::Transport(t),
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

/// The answer to `health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `ok` when the node serves.
    pub status: String,
    /// The node's version.
    pub version: String,
    /// How long the node has run.
    pub uptime: Duration,
}

/// An open, pinned connection to a node.
pub struct NodeConnection {
    node: node::Client,
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// Whether this connection's endpoint is its own (then closing waits for the
    /// endpoint to go idle, so the close reaches the node).
    owns_endpoint: bool,
    channel_binding: [u8; CHANNEL_BINDING_LEN],
}

/// A client QUIC endpoint that trusts what `trust` says (a pinned certificate,
/// or a CA bundle and a name), for connections to `addr`.
pub fn client_endpoint(
    addr: SocketAddr,
    trust: impl Into<ServerTrust>,
) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("valid")
    } else {
        "0.0.0.0:0".parse().expect("valid")
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Unreachable {
        addr,
        reason: e.to_string(),
    })?;
    endpoint.set_default_client_config(tls::client_config(trust)?);
    Ok(endpoint)
}

impl NodeConnection {
    /// Connects to `addr`, trusting only the certificate `pinned`, on a client
    /// endpoint of its own.
    pub async fn connect(
        addr: SocketAddr,
        trust: impl Into<ServerTrust>,
    ) -> Result<NodeConnection, ClientError> {
        let endpoint = client_endpoint(addr, trust)?;
        let mut conn = NodeConnection::connect_via(&endpoint, addr).await?;
        conn.owns_endpoint = true;
        Ok(conn)
    }

    /// Connects through an existing client endpoint (see [`client_endpoint`]):
    /// what a process holding many connections (a load generator) should do.
    pub async fn connect_via(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<NodeConnection, ClientError> {
        Self::connect_inner(endpoint, addr, None).await
    }

    /// Test hook: a connection that stops reading the node's replies while
    /// `pause` says so, as a hostile client would.
    #[doc(hidden)]
    pub async fn connect_with_reply_pause(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        pause: std::rc::Rc<ReplyPause>,
    ) -> Result<NodeConnection, ClientError> {
        Self::connect_inner(endpoint, addr, Some(pause)).await
    }

    async fn connect_inner(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        pause: Option<std::rc::Rc<ReplyPause>>,
    ) -> Result<NodeConnection, ClientError> {
        let connecting =
            endpoint
                .connect(addr, "localhost")
                .map_err(|e| ClientError::Unreachable {
                    addr,
                    reason: e.to_string(),
                })?;
        let connection = connecting
            .await
            .map_err(|e| classify_connect_error(addr, e))?;
        let mut channel_binding = [0u8; CHANNEL_BINDING_LEN];
        connection
            .export_keying_material(&mut channel_binding, EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Protocol("no TLS keying material".into()))?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let recv = PausableReader { inner: recv, pause };
        let network =
            twoparty::VatNetwork::new(recv, send, Side::Client, reader_options(CLIENT_READ_LIMIT));
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let node: node::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!(error = %e, "rpc system ended");
            }
        });
        Ok(NodeConnection {
            node,
            connection,
            endpoint: endpoint.clone(),
            owns_endpoint: false,
            channel_binding,
        })
    }

    /// The node's health, version and uptime.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let reply = self.node.health_request().send().promise.await?;
        let r = reply.get()?;
        Ok(Health {
            status: r.get_status()?.to_string().map_err(protocol)?,
            version: r.get_version()?.to_string().map_err(protocol)?,
            uptime: Duration::from_millis(r.get_uptime_ms()),
        })
    }

    /// One round trip; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let nonce = u64::from_le_bytes(
            quicnprotochat_crypto::fresh_nonce()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let start = Instant::now();
        let mut req = self.node.ping_request();
        req.get().set_nonce(nonce);
        let reply = req.send().promise.await?;
        let elapsed = start.elapsed();
        if reply.get()?.get_nonce() != nonce {
            return Err(ClientError::Protocol(
                "ping answered with the wrong nonce".into(),
            ));
        }
        Ok(elapsed)
    }

    /// Proves `identity` on this connection and returns its session.
    pub async fn authenticate(
        &self,
        identity: &Identity,
        auth_token: Option<&str>,
    ) -> Result<SessionHandle, ClientError> {
        let signature = self.prove(identity).await?;
        self.authenticate_raw(
            &identity.public_key(),
            &signature,
            auth_token.unwrap_or("").as_bytes(),
        )
        .await
    }

    /// Sends an `authenticate` call as given, without computing anything: for
    /// callers (and tests) that need to present wrong credentials on purpose.
    pub async fn authenticate_raw(
        &self,
        identity_key: &[u8],
        signature: &[u8],
        auth_token: &[u8],
    ) -> Result<SessionHandle, ClientError> {
        let mut req = self.node.authenticate_request();
        {
            let mut p = req.get();
            p.set_identity_key(identity_key);
            p.set_signature(signature);
            p.set_auth_token(auth_token);
        }
        let reply = req.send().promise.await?;
        Ok(SessionHandle {
            session: reply.get()?.get_session()?,
        })
    }

    /// Signs this connection's fresh challenge with `identity` (public for
    /// tests that send `loginFinish` themselves).
    #[doc(hidden)]
    pub async fn prove(&self, identity: &Identity) -> Result<[u8; 64], ClientError> {
        let nonce: [u8; 32] =
            self.challenge().await?.try_into().map_err(|_| {
                ClientError::Protocol("challenge nonce has the wrong length".into())
            })?;
        Ok(identity.sign(&auth_transcript(
            &nonce,
            &identity.public_key(),
            &self.channel_binding,
        )))
    }

    /// Creates the account `username` with `password` (OPAQUE: the password never
    /// leaves this process), with `identity` as its first device.
    pub async fn register(
        &self,
        username: &str,
        password: &[u8],
        identity: &Identity,
        auth_token: Option<&str>,
    ) -> Result<(), ClientError> {
        let (state, request) = opaque::client_register_start(password).map_err(opaque_err)?;
        let mut req = self.node.register_start_request();
        req.get().set_username(username);
        req.get().set_request(&request);
        req.get()
            .set_auth_token(auth_token.unwrap_or("").as_bytes());
        let reply = req.send().promise.await?;
        let response = reply.get()?.get_response()?.to_vec();
        let upload = opaque::client_register_finish(state, password, &response, username)
            .map_err(opaque_err)?;
        self.register_finish_raw(username, &upload, identity).await
    }

    /// Proves `identity` on a fresh challenge and sends `registerFinish`. Public
    /// (hidden) so tests can send it without `registerStart`.
    pub async fn register_finish_raw(
        &self,
        username: &str,
        upload: &[u8],
        identity: &Identity,
    ) -> Result<(), ClientError> {
        let signature = self.prove(identity).await?;
        let mut req = self.node.register_finish_request();
        {
            let mut p = req.get();
            p.set_username(username);
            p.set_upload(upload);
            p.set_identity_key(&identity.public_key());
            p.set_signature(&signature);
        }
        req.send().promise.await?;
        Ok(())
    }

    /// Logs in to `username` with `password` as device `identity` (a device not
    /// yet in the account joins it). Returns the session and its resumable token.
    pub async fn login(
        &self,
        username: &str,
        password: &[u8],
        identity: &Identity,
        auth_token: Option<&str>,
    ) -> Result<LoggedIn, ClientError> {
        let (state, request) = opaque::client_login_start(password).map_err(opaque_err)?;
        let mut req = self.node.login_start_request();
        req.get().set_username(username);
        req.get().set_request(&request);
        req.get()
            .set_auth_token(auth_token.unwrap_or("").as_bytes());
        let reply = req.send().promise.await?;
        let response = reply.get()?.get_response()?.to_vec();
        let finish = opaque::client_login_finish(state, password, &response, username);
        // Whatever happened locally, finish the exchange so the node answers the
        // same way to every failure; send garbage if the password was wrong.
        let finalization = match &finish {
            Ok(f) => f.finalization.clone(),
            Err(_) => vec![0u8; 64],
        };
        let signature = self.prove(identity).await?;
        // The node's answer is the one to report, so every failure reads alike.
        let logged = self
            .login_finish_raw(&finalization, &identity.public_key(), &signature)
            .await?;
        if finish.is_err() {
            return Err(ClientError::Refused(WireError::new(
                ErrorCode::Unauthorized,
                "the node accepted a login the client could not complete",
            )));
        }
        Ok(logged)
    }

    /// Sends a raw `loginStart` and returns the node's answer: for tests that
    /// compare answers (enumeration).
    #[doc(hidden)]
    pub async fn login_start_raw(
        &self,
        username: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let mut req = self.node.login_start_request();
        req.get().set_username(username);
        req.get().set_request(request);
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_response()?.to_vec())
    }

    /// Sends `loginFinish` as given (`login` computes the arguments; tests use
    /// it to present a wrong identity proof).
    pub async fn login_finish_raw(
        &self,
        finalization: &[u8],
        identity_key: &[u8],
        signature: &[u8],
    ) -> Result<LoggedIn, ClientError> {
        let mut req = self.node.login_finish_request();
        {
            let mut p = req.get();
            p.set_finalization(finalization);
            p.set_identity_key(identity_key);
            p.set_signature(signature);
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok(LoggedIn {
            session: SessionHandle {
                session: r.get_session()?,
            },
            token: r.get_token()?.to_vec(),
            expires_at_ms: r.get_expires_at_ms(),
        })
    }

    /// Resumes a session from its token (after a reconnect).
    pub async fn resume(
        &self,
        token: &[u8],
        auth_token: Option<&str>,
    ) -> Result<(SessionHandle, u64), ClientError> {
        let mut req = self.node.resume_request();
        req.get().set_token(token);
        req.get()
            .set_auth_token(auth_token.unwrap_or("").as_bytes());
        let reply = req.send().promise.await?;
        let r = reply.get()?;
        Ok((
            SessionHandle {
                session: r.get_session()?,
            },
            r.get_expires_at_ms(),
        ))
    }

    /// Claims one KeyPackage of the mandatory suite per device of a user (or of
    /// one device).
    pub async fn fetch_key_packages(
        &self,
        target: &KeyPackageTarget,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        self.key_directory()
            .fetch_key_packages(target, Suite::Classic)
            .await
    }

    /// What a claim of the classic suite would serve, consuming nothing.
    pub async fn peek_key_packages(
        &self,
        target: &KeyPackageTarget,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        self.key_directory()
            .peek_key_packages(target, Suite::Classic)
            .await
    }

    /// A handle for KeyPackage claims that lives as long as the connection.
    pub fn key_directory(&self) -> KeyDirectory {
        KeyDirectory {
            node: self.node.clone(),
        }
    }

    /// Delivers `payload` to `recipient` without a session (sealed sender).
    pub async fn enqueue_sealed(
        &self,
        recipient: &IdentityKey,
        payload: &[u8],
        access_key: &[u8],
    ) -> Result<u64, ClientError> {
        let mut req = self.node.enqueue_sealed_request();
        {
            let mut p = req.get();
            p.set_recipient(&recipient.0);
            p.set_payload(payload);
            p.set_access_key(access_key);
        }
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seq())
    }

    /// Asks for a fresh challenge nonce.
    pub async fn challenge(&self) -> Result<Vec<u8>, ClientError> {
        let reply = self.node.challenge_request().send().promise.await?;
        Ok(reply.get()?.get_nonce()?.to_vec())
    }

    /// The bootstrap capability as generated code sees it: for tests that send
    /// requests no well-behaved client would (fuzzing).
    #[doc(hidden)]
    pub fn raw_node(&self) -> node::Client {
        self.node.clone()
    }

    /// The channel binding both ends derive from this connection's TLS session.
    pub fn channel_binding(&self) -> [u8; CHANNEL_BINDING_LEN] {
        self.channel_binding
    }

    /// Closes the connection and waits briefly for the close to reach the node.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"bye");
        if self.owns_endpoint {
            let _ =
                tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
        }
    }
}

fn classify_connect_error(addr: SocketAddr, e: quinn::ConnectionError) -> ClientError {
    match &e {
        quinn::ConnectionError::TransportError(t)
            if t.to_string().to_lowercase().contains("certificate") =>
        {
            ClientError::CertificateMismatch { addr }
        }
        quinn::ConnectionError::TimedOut => ClientError::Unreachable {
            addr,
            reason: "no answer (is the server running?)".into(),
        },
        _ => ClientError::Unreachable {
            addr,
            reason: e.to_string(),
        },
    }
}

fn opaque_err(e: opaque::OpaqueError) -> ClientError {
    ClientError::Protocol(format!("OPAQUE: {e}"))
}

impl std::fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIn")
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A successful login.
pub struct LoggedIn {
    /// The session of the logged-in device.
    pub session: SessionHandle,
    /// Resumable token; keep it secret.
    pub token: Vec<u8>,
    /// When the session ends (ms since the Unix epoch).
    pub expires_at_ms: u64,
}
