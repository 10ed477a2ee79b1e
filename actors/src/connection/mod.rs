//! The Cap'n Proto service of one connection: decode, check, forward.
//!
//! `NodeService` (`node_service`) is the bootstrap capability a connection starts
//! with; a successful `authenticate`, login or resume hands out a `SessionService`
//! (`session_service`) bound to one identity. This module holds what both share:
//! the node's context, the call budget, mapping refusals to the wire. Method bodies
//! only translate between the wire and the owners of state (inbox registry, store);
//! the rules live in `core`. capnp-rpc is `!Send`, so these objects live on the
//! connection's local task; everything they call into is `Send`.

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

use crate::auth::{
    AuthError, AuthService, ClaimTarget, ClaimedPackage, SessionProof, check_upload,
};
use crate::core::budget::{CallPermit, ConnectionBudget, NodeBudget, OverBudget};
use crate::core::inbox::InboxLimits;
use crate::core::rate::{ClaimShare, RateLimited, RateLimits, Requester};
use crate::group::GroupRegistry;
use crate::inbox::{Delivery, InboxRegistry};
use crate::store::Store;
use quicnprotochat_crypto::mls::Suite;
use quicnprotochat_crypto::opaque::ServerLoginState;

mod node_service;
mod operator_service;
mod push;
mod rejoin;
mod session_service;

use node_service::NodeService;
use session_service::SessionService;

/// What every connection of a node shares.
pub struct NodeContext {
    /// The inbox actors.
    pub registry: InboxRegistry,
    /// The group actors (epoch fences).
    pub groups: GroupRegistry,
    /// The node's database, for reads.
    pub store: Store,
    /// The store's one writer (for maintenance writes outside any call).
    pub writer: crate::store::StoreWriter,
    /// Accounts, devices, sessions, KeyPackages.
    pub auth: Arc<AuthService>,
    /// Rate limits per session, address and claim target.
    pub rates: RateLimits,
    /// Operator admission token, if configured (held only as a hash).
    pub auth_token: Option<TokenHash>,
    /// The operator's own token (`Node.operator`: accounts on a running
    /// node), if configured (held only as a hash).
    pub operator_token: Option<TokenHash>,
    /// Queue depth and payload limits of every inbox.
    pub limits: InboxLimits,
    /// Whether `enqueueSealed` is served.
    pub sealed_sender: bool,
    /// What calls in flight may hold, per connection and in all.
    pub budget: NodeBudget,
    /// Whether the store's disk has room for data that stays (its high-water
    /// mark).
    pub disk: crate::disk::DiskRoom,
    /// When the node started (for `health`).
    pub started: Instant,
}

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
        OverBudget::Calls { .. }
        | OverBudget::ConnectionBytes { .. }
        | OverBudget::UnreadReplies { .. } => refuse(ErrorCode::RateLimited, e.to_string()),
        // Load on the node as a whole, or a connection that is going.
        OverBudget::NodeBytes { .. } | OverBudget::Closed => {
            refuse(ErrorCode::Unavailable, e.to_string())
        }
    }
}

/// A request over a rate limit: counted (the node logs a summary of these each
/// minute, so a flood cannot flood the log too) and refused with a retry hint.
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

/// Refuses a payload or shared body too large to store, before copying it.
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
    /// The peer's address (rate limits, logs).
    pub remote: std::net::SocketAddr,
}

/// The bootstrap capability of a connection whose calls and replies count
/// against `budget` (from [`NodeBudget::connection`]; the stream that writes
/// the replies gives their bytes back as it takes them).
pub fn bootstrap(
    ctx: Arc<NodeContext>,
    conn: ConnectionInfo,
    budget: ConnectionBudget,
) -> node::Client {
    capnp_rpc::new_client(NodeService::new(ctx, conn, budget))
}

/// Reserves a reply of `bytes` against the connection's budget before it is
/// built (see [`ConnectionBudget::reserve_reply`]).
fn reserve_reply(budget: &ConnectionBudget, bytes: u64) -> Result<(), capnp::Error> {
    budget.reserve_reply(bytes).map_err(over_budget)
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

/// Runs `f` (store reads, OPAQUE) as a task of the node's runtime, so the RPC
/// thread that serves every connection never waits on a database.
async fn spawned<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, capnp::Error> {
    tokio::spawn(f)
        .await
        .map_err(|_| refuse(ErrorCode::Unavailable, "a node task failed"))
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
