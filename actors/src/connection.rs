//! The Cap'n Proto service of one connection: decode, check, forward.
//!
//! `NodeService` is the bootstrap capability a connection starts with; a successful
//! `authenticate` hands out a `SessionService` bound to one identity. Method bodies
//! only translate between the wire and the owners of state (inbox registry, store);
//! the rules live in `core`. capnp-rpc is `!Send`, so these objects live on the
//! connection's local task; everything they call into is `Send`.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp::capability::Rc;
use quicnprotochat_crypto::token::TokenHash;
use quicnprotochat_crypto::{
    AUTH_NONCE_LEN, CHANNEL_BINDING_LEN, fresh_nonce, verify_authentication,
};
use quicnprotochat_wire::limits::{
    MAX_DELIVERIES, MAX_FETCH_BYTES, MAX_FETCH_LIMIT, MAX_FETCH_WAIT_MS,
};
use quicnprotochat_wire::node_capnp::{node, session};
use quicnprotochat_wire::{Envelope, ErrorCode, IdentityKey, WireError};

use crate::auth::{AuthError, AuthService, ClaimTarget, ClaimedPackage, check_upload};
use crate::core::budget::{CallPermit, ConnectionBudget, NodeBudget, OverBudget};
use crate::core::inbox::InboxLimits;
use crate::core::rate::{RateLimited, RateLimits};
use crate::group::{GroupRegistry, MAX_GROUP_ID_LEN};
use crate::inbox::{Delivery, InboxRegistry};
use crate::store::ServerStore;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_crypto::opaque::ServerLoginState;

/// What every connection of a node shares.
pub struct NodeContext {
    pub registry: InboxRegistry,
    pub groups: GroupRegistry,
    pub store: ServerStore,
    pub auth: Arc<AuthService>,
    pub rates: RateLimits,
    /// Operator admission token, if configured (held only as a hash).
    pub auth_token: Option<TokenHash>,
    pub limits: InboxLimits,
    /// Whether `enqueueSealed` is served.
    pub sealed_sender: bool,
    /// What calls in flight may hold, per connection and in all.
    pub budget: NodeBudget,
    pub started: Instant,
}

/// A request over a rate limit: counted (the node logs a summary of these each
/// minute, so a flood cannot flood the log too) and refused with a retry hint.
/// Admits one call whose request is `size` long against the connection's
/// budget; the permit is held until the call is answered.
fn admit(
    budget: &ConnectionBudget,
    size: capnp::Result<capnp::MessageSize>,
) -> Result<CallPermit, capnp::Error> {
    let words = size.map_err(bad_params)?.word_count;
    budget.admit(words.saturating_mul(8)).map_err(over_budget)
}

/// Admits one call that carries no parameters worth counting.
fn admit_call(budget: &ConnectionBudget) -> Result<CallPermit, capnp::Error> {
    budget.admit(0).map_err(over_budget)
}

fn over_budget(e: OverBudget) -> capnp::Error {
    metrics::counter!(crate::telemetry::OVER_BUDGET_TOTAL).increment(1);
    tracing::debug!(reason = %e, "call refused over budget");
    match e {
        // The caller's own doing: it pipelines more than it may.
        OverBudget::Calls { .. } | OverBudget::ConnectionBytes { .. } => {
            refuse(ErrorCode::RateLimited, e.to_string())
        }
        // Load on the node as a whole.
        OverBudget::NodeBytes { .. } => refuse(ErrorCode::Unavailable, e.to_string()),
    }
}

fn rate_limited(r: RateLimited) -> capnp::Error {
    metrics::counter!(crate::telemetry::RATE_LIMITED_TOTAL).increment(1);
    tracing::debug!(
        retry_after_ms = r.retry_after.as_millis() as u64,
        "rate limited"
    );
    refuse(ErrorCode::RateLimited, r.to_string())
}

fn auth_refusal(e: AuthError) -> capnp::Error {
    if let AuthError::Store(s) = &e {
        tracing::error!(error = %s, "auth storage failure");
    }
    WireError::from(e).into()
}

/// The one answer to every failed login, whatever failed (no enumeration).
fn login_refused() -> capnp::Error {
    auth_refusal(AuthError::Unauthorized)
}

/// Refuses a payload too large to store before copying it.
fn check_payload(ctx: &NodeContext, payload: &[u8]) -> Result<(), capnp::Error> {
    if payload.len() > ctx.limits.max_payload {
        return Err(WireError::from(crate::DeliveryError::Refused(
            crate::core::inbox::InboxRefusal::TooLarge {
                len: payload.len(),
                max: ctx.limits.max_payload,
            },
        ))
        .into());
    }
    Ok(())
}

/// Refuses delivery to an inbox no registered device owns (once accounts exist).
fn check_recipient(ctx: &NodeContext, recipient: &IdentityKey) -> Result<(), capnp::Error> {
    if ctx.auth.accepts_inbox(recipient) {
        Ok(())
    } else {
        Err(refuse(ErrorCode::NotFound, "no such inbox"))
    }
}

/// What the transport knows about one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    /// Secret exported from this connection's TLS session; signatures over it are
    /// worthless on any other connection.
    pub channel_binding: [u8; CHANNEL_BINDING_LEN],
    pub remote: std::net::SocketAddr,
}

/// The bootstrap capability of a connection.
pub fn bootstrap(ctx: Arc<NodeContext>, conn: ConnectionInfo) -> node::Client {
    capnp_rpc::new_client(NodeService {
        budget: ctx.budget.connection(),
        ctx,
        conn,
        nonce: Cell::new(None),
        login: RefCell::new(None),
        admitted: Cell::new(false),
    })
}

fn refuse(code: ErrorCode, detail: impl Into<String>) -> capnp::Error {
    WireError::new(code, detail).into()
}

/// Maps a failure to read the caller's parameters to a typed refusal.
fn bad_params(e: capnp::Error) -> capnp::Error {
    match e.kind {
        capnp::ErrorKind::ReadLimitExceeded | capnp::ErrorKind::MessageTooLarge(_) => refuse(
            ErrorCode::TooLarge,
            "request exceeds the node's read limits",
        ),
        _ => refuse(ErrorCode::BadRequest, format!("malformed request: {e}")),
    }
}

fn unimplemented(what: &str) -> capnp::Error {
    refuse(
        ErrorCode::Unimplemented,
        format!("{what} is not available on this node yet"),
    )
}

struct NodeService {
    ctx: Arc<NodeContext>,
    conn: ConnectionInfo,
    /// Shared with every session this connection opens.
    budget: ConnectionBudget,
    /// The outstanding challenge; taken (single use) by whatever proves an identity.
    nonce: Cell<Option<[u8; AUTH_NONCE_LEN]>>,
    /// An OPAQUE login between its start and finish.
    login: RefCell<Option<(String, ServerLoginState)>>,
    /// Whether this connection has presented the admission token (calls that
    /// carry no token of their own, like registerFinish, need that).
    admitted: Cell<bool>,
}

impl NodeService {
    /// Checks the caller's signature over this connection's challenge; consumes
    /// the challenge whatever the outcome (one attempt per challenge).
    fn prove_identity(
        &self,
        identity_key: &[u8],
        signature: &[u8],
    ) -> Result<IdentityKey, capnp::Error> {
        let identity = IdentityKey::from_wire(identity_key, "identityKey")?;
        let nonce = self
            .nonce
            .take()
            .ok_or_else(|| refuse(ErrorCode::Unauthorized, "call challenge first"))?;
        verify_authentication(&nonce, &identity.0, &self.conn.channel_binding, signature)
            .map_err(|_| refuse(ErrorCode::Unauthorized, "signature does not verify"))?;
        Ok(identity)
    }

    fn session(&self, identity: IdentityKey, token_hash: Option<[u8; 32]>) -> session::Client {
        capnp_rpc::new_client(SessionService {
            ctx: self.ctx.clone(),
            budget: self.budget.clone(),
            identity,
            token_hash,
            remote: self.conn.remote,
        })
    }

    fn check_admission(&self, presented: &[u8]) -> Result<(), capnp::Error> {
        match &self.ctx.auth_token {
            Some(hash) if !hash.matches(presented) => Err(refuse(
                ErrorCode::Unauthorized,
                "admission token missing or wrong",
            )),
            _ => {
                self.admitted.set(true);
                Ok(())
            }
        }
    }

    /// One registration, login or resume attempt: admitted, and within the
    /// per-address attempt limit.
    fn admit_login_attempt(&self, presented_token: &[u8]) -> Result<(), capnp::Error> {
        self.check_admission(presented_token)?;
        self.count_login_attempt()
    }

    fn count_login_attempt(&self) -> Result<(), capnp::Error> {
        self.ctx
            .rates
            .login(self.conn.remote.ip())
            .map_err(rate_limited)
    }

    /// Logs a refused login attempt for the operator (never a secret: the
    /// address and what failed).
    fn log_refused_login(&self, call: &'static str, why: &'static str) {
        metrics::counter!(crate::telemetry::LOGINS_FAILED_TOTAL, "call" => call).increment(1);
        tracing::info!(remote = %self.conn.remote, call, why, "login refused");
    }

    /// For calls without a token parameter: the connection must have been
    /// admitted by an earlier call.
    fn check_admitted(&self) -> Result<(), capnp::Error> {
        if self.ctx.auth_token.is_some() && !self.admitted.get() {
            return Err(refuse(
                ErrorCode::Unauthorized,
                "admission token missing or wrong",
            ));
        }
        Ok(())
    }
}

impl node::Server for NodeService {
    async fn health(
        self: Rc<Self>,
        _: node::HealthParams,
        mut results: node::HealthResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        let mut r = results.get();
        r.set_status("ok");
        r.set_version(env!("CARGO_PKG_VERSION"));
        r.set_uptime_ms(self.ctx.started.elapsed().as_millis() as u64);
        Ok(())
    }

    async fn ping(
        self: Rc<Self>,
        params: node::PingParams,
        mut results: node::PingResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        let nonce = params.get().map_err(bad_params)?.get_nonce();
        results.get().set_nonce(nonce);
        Ok(())
    }

    async fn challenge(
        self: Rc<Self>,
        _: node::ChallengeParams,
        mut results: node::ChallengeResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        let nonce = fresh_nonce();
        self.nonce.set(Some(nonce));
        results.get().set_nonce(&nonce);
        Ok(())
    }

    async fn authenticate(
        self: Rc<Self>,
        params: node::AuthenticateParams,
        mut results: node::AuthenticateResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        self.check_admission(p.get_auth_token().map_err(bad_params)?)?;
        // Only failures count against the login limit: a registered device may
        // reconnect as often as it needs to, a guesser may not.
        let proven = self.prove_identity(
            p.get_identity_key().map_err(bad_params)?,
            p.get_signature().map_err(bad_params)?,
        );
        let identity = match proven {
            Ok(identity) => identity,
            Err(e) => {
                self.count_login_attempt()?;
                self.log_refused_login("authenticate", "signature does not verify");
                return Err(e);
            }
        };
        // Once accounts exist, a key proves nothing by itself: only a registered
        // device gets a session (others register or log in first).
        if !self.ctx.auth.accepts_inbox(&identity) {
            self.count_login_attempt()?;
            self.log_refused_login("authenticate", "not a registered device");
            return Err(refuse(
                ErrorCode::Unauthorized,
                "not a registered device of this node: register or log in",
            ));
        }
        tracing::debug!(remote = %self.conn.remote, ?identity, "authenticated");
        results.get().set_session(self.session(identity, None));
        Ok(())
    }

    async fn register_start(
        self: Rc<Self>,
        params: node::RegisterStartParams,
        mut results: node::RegisterStartResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        self.admit_login_attempt(p.get_auth_token().map_err(bad_params)?)?;
        let username = text(p.get_username())?;
        let request = p.get_request().map_err(bad_params)?.to_vec();
        // OPAQUE and a database read: off the RPC thread.
        let auth = self.ctx.auth.clone();
        let response = blocking(move || auth.register_start(&username, &request))
            .await?
            .map_err(auth_refusal)?;
        results.get().set_response(&response);
        Ok(())
    }

    async fn register_finish(
        self: Rc<Self>,
        params: node::RegisterFinishParams,
        _: node::RegisterFinishResults,
    ) -> Result<(), capnp::Error> {
        self.check_admitted()?;
        self.count_login_attempt()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let username = text(p.get_username())?;
        let device = self.prove_identity(
            p.get_identity_key().map_err(bad_params)?,
            p.get_signature().map_err(bad_params)?,
        )?;
        let upload = p.get_upload().map_err(bad_params)?.to_vec();
        self.ctx
            .auth
            .register_finish(&username, &upload, device)
            .await
            .map_err(auth_refusal)?;
        tracing::info!(%username, "account registered");
        Ok(())
    }

    async fn login_start(
        self: Rc<Self>,
        params: node::LoginStartParams,
        mut results: node::LoginStartResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        self.admit_login_attempt(p.get_auth_token().map_err(bad_params)?)?;
        let username = text(p.get_username())?;
        let request = p.get_request().map_err(bad_params)?.to_vec();
        // OPAQUE and a database read: off the RPC thread.
        let auth = self.ctx.auth.clone();
        let name = username.clone();
        let (state, response) = blocking(move || auth.login_start(&name, &request))
            .await?
            .map_err(auth_refusal)?;
        *self.login.borrow_mut() = Some((username, state));
        results.get().set_response(&response);
        Ok(())
    }

    async fn login_finish(
        self: Rc<Self>,
        params: node::LoginFinishParams,
        mut results: node::LoginFinishResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let Some((username, state)) = self.login.borrow_mut().take() else {
            return Err(login_refused());
        };
        // Every failure below answers alike: wrong password, unknown user and a
        // wrong identity key are indistinguishable to the caller.
        let device = self
            .prove_identity(
                p.get_identity_key().map_err(bad_params)?,
                p.get_signature().map_err(bad_params)?,
            )
            .map_err(|_| {
                self.log_refused_login("login", "identity proof does not verify");
                login_refused()
            })?;
        let finalization = p.get_finalization().map_err(bad_params)?.to_vec();
        let issued = match self
            .ctx
            .auth
            .login_finish(state, &username, &finalization, device)
            .await
        {
            Ok(issued) => issued,
            Err(AuthError::Store(e)) => return Err(auth_refusal(AuthError::Store(e))),
            Err(_) => {
                self.log_refused_login("login", "wrong password or another account's device");
                return Err(login_refused());
            }
        };
        metrics::counter!(crate::telemetry::LOGINS_TOTAL, "call" => "login").increment(1);
        tracing::info!(remote = %self.conn.remote, %username, ?device, "logged in");
        let mut r = results.get();
        r.set_session(self.session(device, Some(issued.token_hash)));
        r.set_token(&issued.token);
        r.set_expires_at_ms(issued.expires_at_ms);
        Ok(())
    }

    async fn resume(
        self: Rc<Self>,
        params: node::ResumeParams,
        mut results: node::ResumeResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        self.check_admission(p.get_auth_token().map_err(bad_params)?)?;
        // A valid token is 256 random bits: only failed resumes count against the
        // login limit, so a client may reconnect as often as it needs to.
        let (device, token_hash, expires_at_ms) =
            match self.ctx.auth.resume(p.get_token().map_err(bad_params)?) {
                Ok(resumed) => resumed,
                Err(e) => {
                    self.count_login_attempt()?;
                    self.log_refused_login("resume", "unknown, expired or revoked token");
                    return Err(auth_refusal(e));
                }
            };
        metrics::counter!(crate::telemetry::LOGINS_TOTAL, "call" => "resume").increment(1);
        tracing::debug!(remote = %self.conn.remote, ?device, "session resumed");
        let mut r = results.get();
        r.set_session(self.session(device, Some(token_hash)));
        r.set_expires_at_ms(expires_at_ms);
        Ok(())
    }

    async fn enqueue_sealed(
        self: Rc<Self>,
        params: node::EnqueueSealedParams,
        mut results: node::EnqueueSealedResults,
    ) -> Result<(), capnp::Error> {
        if !self.ctx.sealed_sender {
            return Err(unimplemented(
                "sealed-sender delivery (enable with --sealed-sender)",
            ));
        }
        self.ctx
            .rates
            .sealed_enqueue(self.conn.remote.ip())
            .map_err(rate_limited)?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let recipient =
            IdentityKey::from_wire(p.get_recipient().map_err(bad_params)?, "recipient")?;
        // An unknown recipient has no access key either: one answer for both.
        let access_key = p.get_access_key().map_err(bad_params)?.to_vec();
        let auth = self.ctx.auth.clone();
        let admitted = blocking(move || auth.check_access_key(&recipient, &access_key))
            .await?
            .map_err(auth_refusal)?;
        if !admitted || !self.ctx.auth.accepts_inbox(&recipient) {
            return Err(refuse(ErrorCode::Unauthorized, "wrong access key"));
        }
        let payload = p.get_payload().map_err(bad_params)?;
        check_payload(&self.ctx, payload)?;
        let seq = self
            .ctx
            .registry
            .enqueue(recipient, payload.to_vec())
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(1);
        results.get().set_seq(seq);
        Ok(())
    }

    async fn fetch_key_package(
        self: Rc<Self>,
        params: node::FetchKeyPackageParams,
        mut results: node::FetchKeyPackageResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let (target, suite) = self.key_package_request(p.get_target(), p.get_ciphersuite())?;
        let claimed = self
            .ctx
            .auth
            .claim_key_packages(target, suite)
            .await
            .map_err(auth_refusal)?;
        write_packages(&claimed, results.get().init_packages(claimed.len() as u32));
        Ok(())
    }

    async fn peek_key_packages(
        self: Rc<Self>,
        params: node::PeekKeyPackagesParams,
        mut results: node::PeekKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let (target, suite) = self.key_package_request(p.get_target(), p.get_ciphersuite())?;
        let auth = self.ctx.auth.clone();
        let peeked = blocking(move || auth.peek_key_packages(&target, suite))
            .await?
            .map_err(auth_refusal)?;
        write_packages(&peeked, results.get().init_packages(peeked.len() as u32));
        Ok(())
    }
}

impl NodeService {
    /// Reads a KeyPackage request's target and suite and counts it against the
    /// claim limits: per requester, and per (requester, target), so that nobody
    /// can use up the claims of a target for everyone else.
    fn key_package_request(
        &self,
        target: capnp::Result<quicnprotochat_wire::node_capnp::key_package_target::Reader<'_>>,
        ciphersuite: u16,
    ) -> Result<(ClaimTarget, Suite), capnp::Error> {
        use quicnprotochat_wire::node_capnp::key_package_target::Which;
        let target = match target
            .map_err(bad_params)?
            .which()
            .map_err(|e| bad_params(e.into()))?
        {
            Which::Username(name) => ClaimTarget::Username(text(name)?),
            Which::IdentityKey(key) => ClaimTarget::Device(IdentityKey::from_wire(
                key.map_err(bad_params)?,
                "identityKey",
            )?),
        };
        let target_bytes = match &target {
            ClaimTarget::Username(n) => n.as_bytes().to_vec(),
            ClaimTarget::Device(d) => d.0.to_vec(),
        };
        self.ctx
            .rates
            .claim(self.conn.remote.ip(), &target_bytes)
            .map_err(rate_limited)?;
        let suite = Suite::from_code(ciphersuite).ok_or_else(|| {
            refuse(
                ErrorCode::BadRequest,
                format!("unsupported ciphersuite {ciphersuite:#06x}"),
            )
        })?;
        Ok((target, suite))
    }
}

fn write_packages(
    packages: &[ClaimedPackage],
    mut list: capnp::struct_list::Builder<
        '_,
        quicnprotochat_wire::node_capnp::claimed_key_package::Owned,
    >,
) {
    for (i, c) in packages.iter().enumerate() {
        let mut b = list.reborrow().get(i as u32);
        b.set_identity_key(&c.identity_key.0);
        b.set_key_package(&c.key_package);
        b.set_hybrid_public_key(&c.hybrid_public_key);
        b.set_last_resort(c.last_resort);
    }
}

/// Runs a synchronous read (redb, validation) on the blocking pool, so the RPC
/// thread that serves every connection never waits on a disk.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, capnp::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| refuse(ErrorCode::Unavailable, "a node task failed"))
}

/// Reads a text parameter.
fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, capnp::Error> {
    t.map_err(bad_params)?
        .to_string()
        .map_err(|_| refuse(ErrorCode::BadRequest, "text is not UTF-8"))
}

/// Calls on behalf of one authenticated identity. It has no way to name another
/// inbox for fetch or ack: its own is fixed at construction.
struct SessionService {
    ctx: Arc<NodeContext>,
    budget: ConnectionBudget,
    identity: IdentityKey,
    /// Set when the session came from a login or resume: it ends with the token.
    token_hash: Option<[u8; 32]>,
    remote: std::net::SocketAddr,
}

impl SessionService {
    /// Refuses every call once the session's token is revoked or expired, or
    /// its device is no longer registered (removed from its account).
    fn check_alive(&self) -> Result<(), capnp::Error> {
        let ended = match &self.token_hash {
            Some(h) => !self.ctx.auth.session_alive(h),
            None => !self.ctx.auth.accepts_inbox(&self.identity),
        };
        if ended {
            return Err(refuse(
                ErrorCode::Unauthorized,
                "session ended; log in again",
            ));
        }
        Ok(())
    }

    /// Reads the own inbox off the store (on the blocking pool: it may touch disk).
    async fn read_inbox(&self, after: u64, limit: u32) -> Result<Vec<Envelope>, capnp::Error> {
        let limit = match limit {
            0 => MAX_FETCH_LIMIT,
            n => n.min(MAX_FETCH_LIMIT),
        } as usize;
        let store = self.ctx.store.clone();
        let inbox = self.identity;
        tokio::task::spawn_blocking(move || store.fetch(&inbox, after, limit, MAX_FETCH_BYTES))
            .await
            .map_err(|_| refuse(ErrorCode::Unavailable, "fetch task failed"))?
            .map_err(|e| {
                tracing::error!(error = %e, "fetch failed");
                refuse(ErrorCode::Unavailable, "storage unavailable")
            })
    }
}

fn write_seqs(seqs: &[u64], mut out: capnp::primitive_list::Builder<'_, u64>) {
    for (i, seq) in seqs.iter().enumerate() {
        out.set(i as u32, *seq);
    }
}

fn write_envelopes(
    list: &[Envelope],
    mut out: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::envelope::Owned>,
) {
    for (i, env) in list.iter().enumerate() {
        env.write(out.reborrow().get(i as u32));
    }
}

impl SessionService {
    /// Reads a commit's member list: identity keys, the caller among them.
    fn members(
        &self,
        list: capnp::data_list::Reader<'_>,
    ) -> Result<std::collections::BTreeSet<[u8; 32]>, capnp::Error> {
        if list.len() as usize > MAX_DELIVERIES {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("at most {MAX_DELIVERIES} members"),
            ));
        }
        let members = list
            .iter()
            .map(|m| Ok(IdentityKey::from_wire(m.map_err(bad_params)?, "member")?.0))
            .collect::<Result<std::collections::BTreeSet<_>, capnp::Error>>()?;
        if !members.contains(&self.identity.0) {
            return Err(refuse(
                ErrorCode::BadRequest,
                "members must name the group's members after the commit, the committer among them",
            ));
        }
        Ok(members)
    }

    /// Reads and checks a list of deliveries: every recipient a valid, existing
    /// inbox, every payload within the limit, and not too many of them.
    fn deliveries(
        &self,
        list: capnp::struct_list::Reader<'_, quicnprotochat_wire::node_capnp::delivery::Owned>,
    ) -> Result<Vec<Delivery>, capnp::Error> {
        if list.len() as usize > MAX_DELIVERIES {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!("at most {MAX_DELIVERIES} deliveries per call"),
            ));
        }
        list.iter()
            .map(|d| {
                let recipient =
                    IdentityKey::from_wire(d.get_recipient().map_err(bad_params)?, "recipient")?;
                check_recipient(&self.ctx, &recipient)?;
                let payload = d.get_payload().map_err(bad_params)?;
                check_payload(&self.ctx, payload)?;
                Ok(Delivery {
                    recipient,
                    payload: payload.to_vec(),
                })
            })
            .collect()
    }
}

impl session::Server for SessionService {
    async fn whoami(
        self: Rc<Self>,
        _: session::WhoamiParams,
        mut results: session::WhoamiResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let account = self.ctx.auth.account_of(&self.identity);
        let expires = self
            .token_hash
            .and_then(|h| self.ctx.auth.session_expiry(&h))
            .unwrap_or(0);
        let mut r = results.get();
        r.set_identity_key(&self.identity.0);
        r.set_username(account.as_ref().map_or("", |a| a.username.as_str()));
        r.set_device_count(account.as_ref().map_or(1, |a| a.device_count));
        r.set_expires_at_ms(expires);
        Ok(())
    }

    async fn enqueue(
        self: Rc<Self>,
        params: session::EnqueueParams,
        mut results: session::EnqueueResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        self.ctx
            .rates
            .enqueue(&self.identity.0, self.remote.ip())
            .map_err(rate_limited)?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let recipient =
            IdentityKey::from_wire(p.get_recipient().map_err(bad_params)?, "recipient")?;
        check_recipient(&self.ctx, &recipient)?;
        let payload = p.get_payload().map_err(bad_params)?;
        // Refuse before copying a payload that cannot be stored anyway.
        check_payload(&self.ctx, payload)?;
        let payload = payload.to_vec();
        let seq = self
            .ctx
            .registry
            .enqueue(recipient, payload)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(1);
        results.get().set_seq(seq);
        Ok(())
    }

    async fn enqueue_batch(
        self: Rc<Self>,
        params: session::EnqueueBatchParams,
        mut results: session::EnqueueBatchResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let deliveries = self.deliveries(p.get_deliveries().map_err(bad_params)?)?;
        if deliveries.is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "no deliveries"));
        }
        self.ctx
            .rates
            .enqueue_many(&self.identity.0, self.remote.ip(), deliveries.len())
            .map_err(rate_limited)?;
        let count = deliveries.len() as u64;
        let seqs = self
            .ctx
            .registry
            .enqueue_many(deliveries, None)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(count);
        write_seqs(&seqs, results.get().init_seqs(seqs.len() as u32));
        Ok(())
    }

    async fn fetch(
        self: Rc<Self>,
        params: session::FetchParams,
        mut results: session::FetchResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let list = self.read_inbox(p.get_after(), p.get_limit()).await?;
        metrics::counter!(crate::telemetry::FETCHES_TOTAL).increment(1);
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn fetch_wait(
        self: Rc<Self>,
        params: session::FetchWaitParams,
        mut results: session::FetchWaitResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let (after, limit) = (p.get_after(), p.get_limit());
        let timeout = Duration::from_millis(p.get_timeout_ms().min(MAX_FETCH_WAIT_MS).into());
        let mut list = self.read_inbox(after, limit).await?;
        if list.is_empty() && !timeout.is_zero() {
            let arrived = self
                .ctx
                .registry
                .wait(self.identity, after, timeout)
                .await
                .map_err(WireError::from)?;
            if arrived {
                list = self.read_inbox(after, limit).await?;
            }
        }
        metrics::counter!(crate::telemetry::FETCHES_TOTAL).increment(1);
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn ack(
        self: Rc<Self>,
        params: session::AckParams,
        _: session::AckResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let up_to = params.get().map_err(bad_params)?.get_up_to();
        self.ctx
            .registry
            .ack(self.identity, up_to)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ACKS_TOTAL).increment(1);
        Ok(())
    }

    async fn upload_key_packages(
        self: Rc<Self>,
        params: session::UploadKeyPackagesParams,
        _: session::UploadKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let one_time = p
            .get_one_time()
            .map_err(bad_params)?
            .iter()
            .map(|d| d.map(|d| d.to_vec()).map_err(bad_params))
            .collect::<Result<Vec<_>, _>>()?;
        let last_resort = p.get_last_resort().map_err(bad_params)?.to_vec();
        let hybrid = p.get_hybrid_public_key().map_err(bad_params)?.to_vec();
        let device = self.identity;
        // Validation is CPU work: off the RPC thread.
        let checked = blocking(move || check_upload(device, one_time, last_resort, hybrid))
            .await?
            .map_err(auth_refusal)?;
        self.ctx
            .auth
            .store_upload(checked)
            .await
            .map_err(auth_refusal)
    }

    async fn commit(
        self: Rc<Self>,
        params: session::CommitParams,
        mut results: session::CommitResults,
    ) -> Result<(), capnp::Error> {
        self.check_alive()?;
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let group_id = p.get_group_id().map_err(bad_params)?;
        if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_LEN {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("groupId must be 1 to {MAX_GROUP_ID_LEN} bytes"),
            ));
        }
        check_commit_header(
            p.get_mls_commit().map_err(bad_params)?,
            group_id,
            p.get_epoch(),
        )?;
        let deliveries = self.deliveries(p.get_deliveries().map_err(bad_params)?)?;
        let members = self.members(p.get_members().map_err(bad_params)?)?;
        self.ctx
            .rates
            .enqueue_many(&self.identity.0, self.remote.ip(), deliveries.len().max(1))
            .map_err(rate_limited)?;
        let count = deliveries.len() as u64;
        let seqs = self
            .ctx
            .groups
            .commit(group_id, p.get_epoch(), self.identity, members, deliveries)
            .await
            .map_err(WireError::from)?;
        metrics::counter!(crate::telemetry::ENQUEUES_TOTAL).increment(count);
        write_seqs(&seqs, results.get().init_seqs(seqs.len() as u32));
        Ok(())
    }

    async fn logout(
        self: Rc<Self>,
        _: session::LogoutParams,
        _: session::LogoutResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let Some(hash) = self.token_hash else {
            return Err(refuse(
                ErrorCode::BadRequest,
                "this session did not come from a login",
            ));
        };
        self.ctx.auth.logout(hash).await.map_err(auth_refusal)
    }

    async fn set_access_key(
        self: Rc<Self>,
        params: session::SetAccessKeyParams,
        _: session::SetAccessKeyResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let hash: [u8; 32] = params
            .get()
            .map_err(bad_params)?
            .get_access_key_hash()
            .map_err(bad_params)?
            .try_into()
            .map_err(|_| {
                refuse(
                    ErrorCode::BadRequest,
                    "accessKeyHash must be 32 bytes (SHA-256)",
                )
            })?;
        if !self.ctx.auth.accepts_inbox(&self.identity)
            || self.ctx.auth.account_of(&self.identity).is_none()
        {
            return Err(refuse(
                ErrorCode::BadRequest,
                "only a registered device can set an access key",
            ));
        }
        self.ctx
            .auth
            .set_access_key(self.identity, hash)
            .await
            .map_err(auth_refusal)
    }

    async fn remove_device(
        self: Rc<Self>,
        params: session::RemoveDeviceParams,
        _: session::RemoveDeviceResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let device = IdentityKey::from_wire(
            params
                .get()
                .map_err(bad_params)?
                .get_identity_key()
                .map_err(bad_params)?,
            "identityKey",
        )?;
        self.ctx
            .auth
            .remove_device(self.identity, device)
            .await
            .map_err(auth_refusal)?;
        // The device is gone from the directory: nothing new reaches its inbox;
        // delete what was queued.
        self.ctx
            .registry
            .purge(device)
            .await
            .map_err(WireError::from)?;
        Ok(())
    }

    async fn key_package_status(
        self: Rc<Self>,
        _: session::KeyPackageStatusParams,
        mut results: session::KeyPackageStatusResults,
    ) -> Result<(), capnp::Error> {
        let _call = admit_call(&self.budget)?;
        self.check_alive()?;
        let auth = self.ctx.auth.clone();
        let device = self.identity;
        let (remaining, served) = blocking(move || auth.key_package_status(&device))
            .await?
            .map_err(auth_refusal)?;
        let mut r = results.get();
        r.set_one_time_remaining(remaining);
        r.set_last_resort_served(served);
        Ok(())
    }
}

/// The commit a `commit` call offers must be an MLS commit of the call's group
/// at the call's epoch, as its clear header says: the deliveries are sealed per
/// recipient, so this header is the one part of the commit the node can read.
fn check_commit_header(mls_commit: &[u8], group_id: &[u8], epoch: u64) -> Result<(), capnp::Error> {
    if mls_commit.is_empty() {
        return Err(refuse(
            ErrorCode::BadRequest,
            "mlsCommit is missing: a commit call carries the MLS commit it offers",
        ));
    }
    let header = quicnprotochat_crypto::mls::commit_header(mls_commit)
        .map_err(|e| refuse(ErrorCode::BadRequest, format!("mlsCommit: {e}")))?;
    if header.group_id != group_id || header.epoch != epoch {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!(
                "mlsCommit is a commit of another group or epoch (its header says epoch {}, the call {epoch})",
                header.epoch
            ),
        ));
    }
    Ok(())
}
