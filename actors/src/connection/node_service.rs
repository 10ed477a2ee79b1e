//! The bootstrap capability: health, the ways to a session (challenge,
//! authenticate, OPAQUE registration and login, resume), sealed-sender delivery
//! and the KeyPackage directory.

use std::cell::{Cell, RefCell};

use super::*;
use crate::auth::{LOGIN_FINISH_WITHIN, OpenedSession, key_package_requester};

pub(super) struct NodeService {
    ctx: Arc<NodeContext>,
    conn: ConnectionInfo,
    /// Shared with every session this connection opens.
    budget: ConnectionBudget,
    /// The outstanding challenge; taken (single use) by whatever proves an identity.
    nonce: Cell<Option<[u8; AUTH_NONCE_LEN]>>,
    /// An OPAQUE login between its start and finish.
    login: RefCell<Option<PendingLogin>>,
    /// Whether this connection has presented the admission token (calls that
    /// carry no token of their own, like registerFinish, need that).
    admitted: Cell<bool>,
    /// The last session this connection opened: its device and token hash
    /// (`None` for a key-only session). On a node with accounts, KeyPackages
    /// are claimed and peeked by a registered device with a live session.
    opened: Cell<Option<(IdentityKey, Option<[u8; 32]>)>>,
}

/// An OPAQUE login between its start and finish.
struct PendingLogin {
    username: String,
    state: ServerLoginState,
    /// SHA-256 of the password record it started with.
    record_hash: [u8; 32],
    started: std::time::Instant,
}

impl NodeService {
    /// A fresh connection's bootstrap service, with its budget.
    pub(super) fn new(
        ctx: Arc<NodeContext>,
        conn: ConnectionInfo,
        budget: ConnectionBudget,
    ) -> NodeService {
        NodeService {
            budget,
            ctx,
            conn,
            nonce: Cell::new(None),
            login: RefCell::new(None),
            admitted: Cell::new(false),
            opened: Cell::new(None),
        }
    }

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

    fn session(
        &self,
        identity: IdentityKey,
        token_hash: Option<[u8; 32]>,
        proof: SessionProof,
    ) -> session::Client {
        self.opened.set(Some((identity, token_hash)));
        capnp_rpc::new_client(SessionService::new(
            self.ctx.clone(),
            self.budget.clone(),
            identity,
            token_hash,
            proof,
            self.conn.remote,
        ))
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

    /// A failed attempt to prove who one is: counted against the login limit
    /// (refused when over it), then logged.
    fn failed_attempt(&self, call: &'static str, why: &'static str) -> Result<(), capnp::Error> {
        self.count_login_attempt()?;
        self.log_refused_login(call, why);
        Ok(())
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
                self.failed_attempt("authenticate", "signature does not verify")?;
                return Err(e);
            }
        };
        // Once accounts exist, a key proves nothing by itself: only a registered
        // device gets a session (others register or log in first).
        if !self.ctx.auth.accepts_inbox(&identity) {
            self.failed_attempt("authenticate", "not a registered device")?;
            return Err(refuse(
                ErrorCode::Unauthorized,
                "not a registered device of this node: register or log in",
            ));
        }
        tracing::debug!(remote = %self.conn.remote, ?identity, "authenticated");
        results.get().set_session(self.session(
            identity,
            None,
            SessionProof::Key {
                opened: std::time::Instant::now(),
            },
        ));
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
        self.ctx.disk.check("a new account")?;
        let username = text(p.get_username())?;
        let request = p.get_request().map_err(bad_params)?.to_vec();
        // OPAQUE and a database read: off the RPC thread.
        let auth = self.ctx.auth.clone();
        let response = spawned(async move { auth.register_start(&username, &request).await })
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
        self.ctx.disk.check("a new account")?;
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
        let (state, response, record_hash) =
            spawned(async move { auth.login_start(&name, &request).await })
                .await?
                .map_err(auth_refusal)?;
        *self.login.borrow_mut() = Some(PendingLogin {
            username,
            state,
            record_hash,
            started: std::time::Instant::now(),
        });
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
        let Some(PendingLogin {
            username,
            state,
            record_hash,
            started,
        }) = self.login.borrow_mut().take()
        else {
            return Err(login_refused());
        };
        // A login left half-done is not finished later (the password may
        // have changed meanwhile, and nobody waits that long by accident).
        if started.elapsed() > LOGIN_FINISH_WITHIN {
            self.log_refused_login("login", "finished too long after it started");
            return Err(login_refused());
        }
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
        // A device the node does not know yet is data that stays; a known one
        // logs in whatever the disk.
        if self.ctx.auth.account_of(&device).is_none() {
            self.ctx.disk.check("a new device")?;
        }
        let issued = match self
            .ctx
            .auth
            .login_finish(state, &username, &finalization, device, record_hash)
            .await
        {
            Ok(issued) => issued,
            Err(AuthError::Store(e)) => return Err(auth_refusal(AuthError::Store(e))),
            // Said plainly: only who knows the password and holds the key gets
            // here, and that user needs to know what to do (start a new
            // profile; remove a device first).
            Err(e @ (AuthError::DeviceRetired | AuthError::QuotaExceeded(_))) => {
                self.log_refused_login("login", "a removed device, or one device too many");
                return Err(auth_refusal(e));
            }
            Err(_) => {
                self.log_refused_login("login", "wrong password or another account's device");
                return Err(login_refused());
            }
        };
        metrics::counter!(crate::telemetry::LOGINS_TOTAL, "call" => "login").increment(1);
        tracing::info!(remote = %self.conn.remote, %username, ?device, "logged in");
        let mut r = results.get();
        r.set_session(self.session(
            device,
            Some(issued.token_hash),
            SessionProof::Password {
                at: std::time::Instant::now(),
            },
        ));
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
        let (device, token_hash, expires_at_ms) = match self
            .ctx
            .auth
            .resume(p.get_token().map_err(bad_params)?)
            .await
        {
            Ok(resumed) => resumed,
            Err(e @ AuthError::Unauthorized) => {
                self.failed_attempt("resume", "unknown, expired or revoked token")?;
                return Err(auth_refusal(e));
            }
            // The store failed moving the session's end: not a guess.
            Err(e) => return Err(auth_refusal(e)),
        };
        metrics::counter!(crate::telemetry::LOGINS_TOTAL, "call" => "resume").increment(1);
        tracing::debug!(remote = %self.conn.remote, ?device, "session resumed");
        let mut r = results.get();
        r.set_session(self.session(device, Some(token_hash), SessionProof::Token));
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
        let admitted = spawned(async move { auth.check_access_key(&recipient, &access_key).await })
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
        let (devices, suite, share) =
            self.key_package_request(p.get_target(), p.get_ciphersuite())?;
        let auth = self.ctx.auth.clone();
        let claimed = match share {
            ClaimShare::OneTime => auth.claim_key_packages(devices, suite).await,
            // Past the device's cap across requesters: its reusable package,
            // consuming nothing.
            ClaimShare::LastResortOnly => {
                spawned(async move { auth.peek_key_packages(devices, suite).await }).await?
            }
        }
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
        let (devices, suite, _) = self.key_package_request(p.get_target(), p.get_ciphersuite())?;
        let auth = self.ctx.auth.clone();
        let peeked = spawned(async move { auth.peek_key_packages(devices, suite).await })
            .await?
            .map_err(auth_refusal)?;
        write_packages(&peeked, results.get().init_packages(peeked.len() as u32));
        Ok(())
    }

    async fn operator(
        self: Rc<Self>,
        params: node::OperatorParams,
        mut results: node::OperatorResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let _call = admit(&self.budget, p.total_size())?;
        let presented = p.get_operator_token().map_err(bad_params)?;
        let Some(hash) = &self.ctx.operator_token else {
            return Err(refuse(
                ErrorCode::Unauthorized,
                "this node has no operator token (operator_token in its config)",
            ));
        };
        // Every presentation counts against the login limit BEFORE the token
        // is compared: while an address is limited, no guess of it is judged
        // (answering RATE_LIMITED and then accepting the right token would let
        // a guesser go on at full speed). The comparison is constant-time.
        self.count_login_attempt()?;
        if !hash.matches(presented) {
            self.log_refused_login("operator", "wrong operator token");
            return Err(refuse(ErrorCode::Unauthorized, "wrong operator token"));
        }
        tracing::info!(remote = %self.conn.remote, "operator connected");
        results.get().set_operator(capnp_rpc::new_client(
            super::operator_service::OperatorService::new(self.ctx.clone(), self.budget.clone()),
        ));
        Ok(())
    }
}

impl NodeService {
    /// Who asks for KeyPackages (`auth::rules::key_package_requester`).
    fn key_package_requester(&self) -> Result<Requester, capnp::Error> {
        let opened = self.opened.get().map(|(device, token_hash)| OpenedSession {
            device,
            alive: token_hash.is_some_and(|t| self.ctx.auth.session_alive(&t)),
            registered: self.ctx.auth.account_of(&device).is_some(),
        });
        key_package_requester(
            self.ctx.auth.accounts_exist(),
            self.conn.remote.ip(),
            opened,
        )
        .map_err(|why| refuse(ErrorCode::Unauthorized, why))
    }

    /// Reads a KeyPackage request's target and suite, checks them, resolves the
    /// target to its devices and counts the request against the claim limits:
    /// per requester and per (requester, device), then per device (past which
    /// only last-resort packages are served). Validation comes
    /// first: nothing a caller sends is kept by a limiter (its keys are fixed
    /// size).
    fn key_package_request(
        &self,
        target: capnp::Result<quicnprotochat_wire::node_capnp::key_package_target::Reader<'_>>,
        ciphersuite: u16,
    ) -> Result<(Vec<IdentityKey>, Suite, ClaimShare), capnp::Error> {
        use quicnprotochat_wire::node_capnp::key_package_target::Which;
        let target = match target
            .map_err(bad_params)?
            .which()
            .map_err(|e| bad_params(e.into()))?
        {
            Which::Username(name) => {
                let name = text(name)?;
                crate::auth::check_username(&name).map_err(auth_refusal)?;
                ClaimTarget::Username(name)
            }
            Which::IdentityKey(key) => ClaimTarget::Device(IdentityKey::from_wire(
                key.map_err(bad_params)?,
                "identityKey",
            )?),
        };
        let suite = Suite::from_code(ciphersuite).ok_or_else(|| {
            refuse(
                ErrorCode::BadRequest,
                format!("unsupported ciphersuite {ciphersuite:#06x}"),
            )
        })?;
        let requester = self.key_package_requester()?;
        let devices = self.ctx.auth.target_devices(&target);
        if devices.is_empty() {
            // Counted too, so probing for names costs the same as claiming.
            self.ctx.rates.claim(requester, &[]).map_err(rate_limited)?;
            return Err(auth_refusal(crate::auth::AuthError::NotFound(
                crate::auth::NO_SUCH_USER,
            )));
        }
        let keys: Vec<[u8; 32]> = devices.iter().map(|d| d.0).collect();
        let share = self
            .ctx
            .rates
            .claim(requester, &keys)
            .map_err(rate_limited)?;
        Ok((devices, suite, share))
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
