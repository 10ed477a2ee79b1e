//! The Cap'n Proto service of one connection: decode, check, forward.
//!
//! `NodeService` is the bootstrap capability a connection starts with; a successful
//! `authenticate` hands out a `SessionService` bound to one identity. Method bodies
//! only translate between the wire and the owners of state (inbox registry, store);
//! the rules live in `core`. capnp-rpc is `!Send`, so these objects live on the
//! connection's local task; everything they call into is `Send`.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp::capability::Rc;
use quicnprotochat_crypto::token::TokenHash;
use quicnprotochat_crypto::{
    AUTH_NONCE_LEN, CHANNEL_BINDING_LEN, fresh_nonce, verify_authentication,
};
use quicnprotochat_wire::limits::{MAX_FETCH_BYTES, MAX_FETCH_LIMIT, MAX_FETCH_WAIT_MS};
use quicnprotochat_wire::node_capnp::{node, session};
use quicnprotochat_wire::{Envelope, ErrorCode, IdentityKey, WireError};

use crate::core::inbox::InboxLimits;
use crate::inbox::InboxRegistry;
use crate::store::ServerStore;

/// What every connection of a node shares.
pub struct NodeContext {
    pub registry: InboxRegistry,
    pub store: ServerStore,
    /// Operator admission token, if configured (held only as a hash).
    pub auth_token: Option<TokenHash>,
    pub limits: InboxLimits,
    pub started: Instant,
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
        ctx,
        conn,
        nonce: Cell::new(None),
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
    /// The outstanding challenge; taken (single use) by `authenticate`.
    nonce: Cell<Option<[u8; AUTH_NONCE_LEN]>>,
}

impl NodeService {
    fn check_admission(&self, presented: &[u8]) -> Result<(), capnp::Error> {
        match &self.ctx.auth_token {
            Some(hash) if !hash.matches(presented) => Err(refuse(
                ErrorCode::Unauthorized,
                "admission token missing or wrong",
            )),
            _ => Ok(()),
        }
    }
}

impl node::Server for NodeService {
    async fn health(
        self: Rc<Self>,
        _: node::HealthParams,
        mut results: node::HealthResults,
    ) -> Result<(), capnp::Error> {
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
        let nonce = params.get().map_err(bad_params)?.get_nonce();
        results.get().set_nonce(nonce);
        Ok(())
    }

    async fn challenge(
        self: Rc<Self>,
        _: node::ChallengeParams,
        mut results: node::ChallengeResults,
    ) -> Result<(), capnp::Error> {
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
        self.check_admission(p.get_auth_token().map_err(bad_params)?)?;
        let identity =
            IdentityKey::from_wire(p.get_identity_key().map_err(bad_params)?, "identityKey")?;
        let signature = p.get_signature().map_err(bad_params)?;
        // The nonce is consumed whatever the outcome: one signature attempt per challenge.
        let nonce = self
            .nonce
            .take()
            .ok_or_else(|| refuse(ErrorCode::Unauthorized, "call challenge first"))?;
        verify_authentication(&nonce, &identity.0, &self.conn.channel_binding, signature)
            .map_err(|_| refuse(ErrorCode::Unauthorized, "signature does not verify"))?;
        tracing::debug!(remote = %self.conn.remote, ?identity, "authenticated");
        results
            .get()
            .set_session(capnp_rpc::new_client(SessionService {
                ctx: self.ctx.clone(),
                identity,
            }));
        Ok(())
    }

    async fn register_start(
        self: Rc<Self>,
        _: node::RegisterStartParams,
        _: node::RegisterStartResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("registerStart"))
    }

    async fn register_finish(
        self: Rc<Self>,
        _: node::RegisterFinishParams,
        _: node::RegisterFinishResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("registerFinish"))
    }

    async fn login_start(
        self: Rc<Self>,
        _: node::LoginStartParams,
        _: node::LoginStartResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("loginStart"))
    }

    async fn login_finish(
        self: Rc<Self>,
        _: node::LoginFinishParams,
        _: node::LoginFinishResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("loginFinish"))
    }

    async fn resume(
        self: Rc<Self>,
        _: node::ResumeParams,
        _: node::ResumeResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("resume"))
    }

    async fn enqueue_sealed(
        self: Rc<Self>,
        _: node::EnqueueSealedParams,
        _: node::EnqueueSealedResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("enqueueSealed"))
    }

    async fn fetch_key_package(
        self: Rc<Self>,
        _: node::FetchKeyPackageParams,
        _: node::FetchKeyPackageResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("fetchKeyPackage"))
    }
}

/// Calls on behalf of one authenticated identity. It has no way to name another
/// inbox for fetch or ack: its own is fixed at construction.
struct SessionService {
    ctx: Arc<NodeContext>,
    identity: IdentityKey,
}

impl SessionService {
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

fn write_envelopes(
    list: &[Envelope],
    mut out: capnp::struct_list::Builder<'_, quicnprotochat_wire::node_capnp::envelope::Owned>,
) {
    for (i, env) in list.iter().enumerate() {
        env.write(out.reborrow().get(i as u32));
    }
}

impl session::Server for SessionService {
    async fn whoami(
        self: Rc<Self>,
        _: session::WhoamiParams,
        mut results: session::WhoamiResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        r.set_identity_key(&self.identity.0);
        r.set_username("");
        r.set_device_count(1);
        r.set_expires_at_ms(0);
        Ok(())
    }

    async fn enqueue(
        self: Rc<Self>,
        params: session::EnqueueParams,
        mut results: session::EnqueueResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let recipient =
            IdentityKey::from_wire(p.get_recipient().map_err(bad_params)?, "recipient")?;
        let payload = p.get_payload().map_err(bad_params)?;
        // Refuse before copying a payload that cannot be stored anyway.
        if payload.len() > self.ctx.limits.max_payload {
            return Err(WireError::from(crate::DeliveryError::Refused(
                crate::core::inbox::InboxRefusal::TooLarge {
                    len: payload.len(),
                    max: self.ctx.limits.max_payload,
                },
            ))
            .into());
        }
        let payload = payload.to_vec();
        let seq = self
            .ctx
            .registry
            .enqueue(recipient, payload)
            .await
            .map_err(WireError::from)?;
        results.get().set_seq(seq);
        Ok(())
    }

    async fn enqueue_batch(
        self: Rc<Self>,
        _: session::EnqueueBatchParams,
        _: session::EnqueueBatchResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("enqueueBatch"))
    }

    async fn fetch(
        self: Rc<Self>,
        params: session::FetchParams,
        mut results: session::FetchResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
        let list = self.read_inbox(p.get_after(), p.get_limit()).await?;
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn fetch_wait(
        self: Rc<Self>,
        params: session::FetchWaitParams,
        mut results: session::FetchWaitResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get().map_err(bad_params)?;
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
        write_envelopes(&list, results.get().init_envelopes(list.len() as u32));
        Ok(())
    }

    async fn ack(
        self: Rc<Self>,
        params: session::AckParams,
        _: session::AckResults,
    ) -> Result<(), capnp::Error> {
        let up_to = params.get().map_err(bad_params)?.get_up_to();
        self.ctx
            .registry
            .ack(self.identity, up_to)
            .await
            .map_err(WireError::from)?;
        Ok(())
    }

    async fn upload_key_packages(
        self: Rc<Self>,
        _: session::UploadKeyPackagesParams,
        _: session::UploadKeyPackagesResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("uploadKeyPackages"))
    }

    async fn commit(
        self: Rc<Self>,
        _: session::CommitParams,
        _: session::CommitResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("commit"))
    }

    async fn logout(
        self: Rc<Self>,
        _: session::LogoutParams,
        _: session::LogoutResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("logout"))
    }

    async fn set_access_key(
        self: Rc<Self>,
        _: session::SetAccessKeyParams,
        _: session::SetAccessKeyResults,
    ) -> Result<(), capnp::Error> {
        Err(unimplemented("setAccessKey"))
    }
}
