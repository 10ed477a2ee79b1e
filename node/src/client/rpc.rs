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
use rustls::pki_types::CertificateDer;

use crate::tls::{self, TlsError};

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
    #[error("the server at {addr} does not present the pinned certificate")]
    /// The node showed another certificate than the pinned one.
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

/// A client QUIC endpoint that trusts exactly `pinned`, for connections to `addr`.
pub fn client_endpoint(
    addr: SocketAddr,
    pinned: CertificateDer<'static>,
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
    endpoint.set_default_client_config(tls::client_config(pinned)?);
    Ok(endpoint)
}

impl NodeConnection {
    /// Connects to `addr`, trusting only the certificate `pinned`, on a client
    /// endpoint of its own.
    pub async fn connect(
        addr: SocketAddr,
        pinned: CertificateDer<'static>,
    ) -> Result<NodeConnection, ClientError> {
        let endpoint = client_endpoint(addr, pinned)?;
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

    /// Signs this connection's fresh challenge with `identity`.
    async fn prove(&self, identity: &Identity) -> Result<[u8; 64], ClientError> {
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

/// Whose KeyPackages to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPackageTarget {
    /// Every device of this username.
    Username(String),
    /// This one device.
    Device(IdentityKey),
}

/// A claimed KeyPackage, as the node returned it (verify before use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// The device the package is for.
    pub identity_key: IdentityKey,
    /// The KeyPackage.
    pub key_package: Vec<u8>,
    /// The device's signed hybrid key.
    pub hybrid_public_key: Vec<u8>,
    /// Whether it is the reusable last-resort package.
    pub last_resort: bool,
}

/// The node's KeyPackage directory (no session needed).
#[derive(Clone)]
pub struct KeyDirectory {
    node: node::Client,
}

impl KeyDirectory {
    /// Claims one KeyPackage of `suite` per device of a user (or of one device).
    pub async fn fetch_key_packages(
        &self,
        target: &KeyPackageTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        let mut req = self.node.fetch_key_package_request();
        req.get().set_ciphersuite(suite.code());
        set_target(req.get().init_target(), target);
        let reply = req.send().promise.await?;
        read_packages(reply.get()?.get_packages()?)
    }

    /// What a claim would serve, consuming nothing: per device, its hybrid key
    /// and last-resort package of `suite`. For checking someone's keys.
    pub async fn peek_key_packages(
        &self,
        target: &KeyPackageTarget,
        suite: Suite,
    ) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
        let mut req = self.node.peek_key_packages_request();
        req.get().set_ciphersuite(suite.code());
        set_target(req.get().init_target(), target);
        let reply = req.send().promise.await?;
        read_packages(reply.get()?.get_packages()?)
    }
}

fn set_target(
    mut out: quicnprotochat_wire::node_capnp::key_package_target::Builder<'_>,
    target: &KeyPackageTarget,
) {
    match target {
        KeyPackageTarget::Username(u) => out.set_username(u),
        KeyPackageTarget::Device(d) => out.set_identity_key(&d.0),
    }
}

fn read_packages(
    list: capnp::struct_list::Reader<
        '_,
        quicnprotochat_wire::node_capnp::claimed_key_package::Owned,
    >,
) -> Result<Vec<ClaimedKeyPackage>, ClientError> {
    list.iter()
        .map(|p| {
            Ok(ClaimedKeyPackage {
                identity_key: IdentityKey::from_wire(p.get_identity_key()?, "identityKey")
                    .map_err(ClientError::Refused)?,
                key_package: p.get_key_package()?.to_vec(),
                hybrid_public_key: p.get_hybrid_public_key()?.to_vec(),
                last_resort: p.get_last_resort(),
            })
        })
        .collect()
}

/// Test hook: whether a connection reads the node's replies (see
/// [`NodeConnection::connect_with_reply_pause`]).
#[doc(hidden)]
#[derive(Default)]
pub struct ReplyPause {
    paused: std::cell::Cell<bool>,
    waker: std::cell::RefCell<Option<std::task::Waker>>,
}

impl ReplyPause {
    /// Stops reading replies.
    pub fn pause(&self) {
        self.paused.set(true);
    }

    /// Reads replies again.
    pub fn resume(&self) {
        self.paused.set(false);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct PausableReader<R> {
    inner: R,
    pause: Option<std::rc::Rc<ReplyPause>>,
}

impl<R: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for PausableReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(p) = &self.pause
            && p.paused.get()
        {
            *p.waker.borrow_mut() = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// An authenticated session: calls on behalf of one identity.
#[derive(Clone)]
pub struct SessionHandle {
    session: session::Client,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionHandle")
    }
}

/// What `whoami` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhoAmI {
    /// The session's device.
    pub identity_key: IdentityKey,
    /// Its account, empty when none.
    pub username: String,
    /// Devices in the account.
    pub device_count: u32,
    /// 0 when the session did not come from a login.
    pub expires_at_ms: u64,
}

impl SessionHandle {
    /// The session capability as generated code sees it (fuzzing).
    #[doc(hidden)]
    pub fn raw_session(&self) -> session::Client {
        self.session.clone()
    }

    /// Who this session is.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        let reply = self.session.whoami_request().send().promise.await?;
        let r = reply.get()?;
        Ok(WhoAmI {
            identity_key: IdentityKey::from_wire(r.get_identity_key()?, "identityKey")
                .map_err(ClientError::Refused)?,
            username: r.get_username()?.to_string().map_err(protocol)?,
            device_count: r.get_device_count(),
            expires_at_ms: r.get_expires_at_ms(),
        })
    }

    /// Publishes one-time KeyPackages, optionally a new last-resort package and
    /// the signed hybrid key (empty = keep what the node has).
    pub async fn upload_key_packages(
        &self,
        one_time: &[Vec<u8>],
        last_resort: &[u8],
        hybrid_public_key: &[u8],
    ) -> Result<(), ClientError> {
        let mut req = self.session.upload_key_packages_request();
        {
            let mut p = req.get();
            let mut list = p.reborrow().init_one_time(one_time.len() as u32);
            for (i, kp) in one_time.iter().enumerate() {
                list.set(i as u32, kp);
            }
            p.set_last_resort(last_resort);
            p.set_hybrid_public_key(hybrid_public_key);
        }
        req.send().promise.await?;
        Ok(())
    }

    /// How many one-time KeyPackages are left, and how often the last-resort one
    /// was served.
    pub async fn key_package_status(&self) -> Result<(u64, u64), ClientError> {
        let reply = self
            .session
            .key_package_status_request()
            .send()
            .promise
            .await?;
        let r = reply.get()?;
        Ok((r.get_one_time_remaining(), r.get_last_resort_served()))
    }

    /// Revokes this session's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.session.logout_request().send().promise.await?;
        Ok(())
    }

    /// Sets the hash of the access key sealed senders must present.
    pub async fn set_access_key(&self, access_key_hash: &[u8]) -> Result<(), ClientError> {
        let mut req = self.session.set_access_key_request();
        req.get().set_access_key_hash(access_key_hash);
        req.send().promise.await?;
        Ok(())
    }

    /// Removes another device from this account.
    pub async fn remove_device(&self, device: &IdentityKey) -> Result<(), ClientError> {
        let mut req = self.session.remove_device_request();
        req.get().set_identity_key(&device.0);
        req.send().promise.await?;
        Ok(())
    }

    /// Stores `payload` in `recipient`'s inbox; returns its seq (durable).
    pub async fn enqueue(
        &self,
        recipient: &IdentityKey,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        self.enqueue_raw(&recipient.0, payload).await
    }

    /// `enqueue` with the recipient as raw bytes, unchecked: for callers (and
    /// tests) that must be able to send what the node has to refuse.
    pub async fn enqueue_raw(&self, recipient: &[u8], payload: &[u8]) -> Result<u64, ClientError> {
        let mut req = self.session.enqueue_request();
        {
            let mut p = req.get();
            p.set_recipient(recipient);
            p.set_payload(payload);
        }
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seq())
    }

    /// Stores every `(recipient, payload)` in one durable transaction, all or
    /// none; returns the seqs in the same order.
    pub async fn enqueue_batch(
        &self,
        deliveries: &[(IdentityKey, Vec<u8>)],
    ) -> Result<Vec<u64>, ClientError> {
        let mut req = self.session.enqueue_batch_request();
        write_deliveries(
            req.get().init_deliveries(deliveries.len() as u32),
            deliveries,
        );
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seqs()?.iter().collect())
    }

    /// Offers a commit made at `epoch` of `group_id`; its deliveries are stored
    /// (one transaction) only if it is the first commit at that epoch, otherwise
    /// the node answers `STALE_EPOCH`.
    /// `members`: the group's members once the commit applies (this device among
    /// them); the node lets only them commit next. `mls_commit`: the commit
    /// itself, whose clear header the node checks against `group_id` and `epoch`.
    pub async fn commit(
        &self,
        group_id: &[u8],
        epoch: u64,
        members: &[Vec<u8>],
        deliveries: &[(IdentityKey, Vec<u8>)],
        mls_commit: &[u8],
    ) -> Result<Vec<u64>, ClientError> {
        let mut req = self.session.commit_request();
        req.get().set_group_id(group_id);
        req.get().set_epoch(epoch);
        req.get().set_mls_commit(mls_commit);
        {
            let mut list = req.get().init_members(members.len() as u32);
            for (i, m) in members.iter().enumerate() {
                list.set(i as u32, m);
            }
        }
        write_deliveries(
            req.get().init_deliveries(deliveries.len() as u32),
            deliveries,
        );
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_seqs()?.iter().collect())
    }

    /// Envelopes of the own inbox with seq > `after` (0 = as many as allowed).
    pub async fn fetch(&self, after: u64, limit: u32) -> Result<Vec<Envelope>, ClientError> {
        let mut req = self.session.fetch_request();
        req.get().set_after(after);
        req.get().set_limit(limit);
        let reply = req.send().promise.await?;
        read_envelopes(reply.get()?.get_envelopes()?)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Like `fetch`, but waits up to `timeout` for something to arrive.
    pub async fn fetch_wait(
        &self,
        after: u64,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<Envelope>, ClientError> {
        let mut req = self.session.fetch_wait_request();
        req.get().set_after(after);
        req.get().set_limit(limit);
        req.get()
            .set_timeout_ms(timeout.as_millis().min(u32::MAX as u128) as u32);
        let reply = req.send().promise.await?;
        read_envelopes(reply.get()?.get_envelopes()?)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Deletes the own inbox's envelopes up to `up_to` (durable on return).
    pub async fn ack(&self, up_to: u64) -> Result<(), ClientError> {
        let mut req = self.session.ack_request();
        req.get().set_up_to(up_to);
        req.send().promise.await?;
        Ok(())
    }
}

fn write_deliveries(
    mut list: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::delivery::Owned>,
    deliveries: &[(IdentityKey, Vec<u8>)],
) {
    for (i, (recipient, payload)) in deliveries.iter().enumerate() {
        let mut d = list.reborrow().get(i as u32);
        d.set_recipient(&recipient.0);
        d.set_payload(payload);
    }
}
