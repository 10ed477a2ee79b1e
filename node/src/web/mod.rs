//! `quicnprotochat web`: a local web UI for one client profile.
//!
//! The page and the HTTP API are served on a loopback address only: the UI sends
//! plain HTTP, and the profile it drives holds the user's keys. Other local users
//! can reach a loopback port, so every API call carries a secret access token
//! (`Authorization: Bearer …`). The token reaches the page in the URL's fragment,
//! which browsers never send to a server, and the page keeps it in
//! `sessionStorage`, which (unlike a cookie) is scoped to this port. A request from
//! another site cannot set that header without a CORS preflight this server never
//! grants, and the `Host` check turns away DNS-rebinding pages.
//!
//! Shape: [`run`] binds nothing itself (mini-redis' `server::run(listener,
//! shutdown)`); [`agent`] owns the profile's [`Messenger`] on the caller's
//! `LocalSet` and serializes every call to it; [`http`] is the thin HTTP glue.
//!
//! [`Messenger`]: crate::client::messenger::Messenger

pub mod agent;
pub mod http;
pub mod listener;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::client::commands::ClientOptions;

/// Where `web` listens unless told otherwise (port 0: any free port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";

/// Why the web UI could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebStartError {
    /// The address is not a loopback one (what was given).
    #[error(
        "the web UI listens on loopback addresses only (127.0.0.1, ::1), not {0}: it serves plain HTTP for the profile's owner"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the web UI stopped: {0}")]
    Serve(std::io::Error),
}

/// Binds the UI's listener on `addr`, which must be a loopback address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebStartError> {
    if !addr.ip().is_loopback() {
        return Err(WebStartError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebStartError::Bind { addr, source })
}

/// A fresh access token, hex.
pub fn new_access_token() -> String {
    hex::encode(quicnprotochat_crypto::token::generate_token())
}

/// The address a user opens: the page, with the token in the fragment.
pub fn page_url(addr: SocketAddr, token: &str) -> String {
    format!("http://{addr}/#token={token}")
}

/// Serves the UI of the profile in `opts` on `listener` until `shutdown`
/// completes; `token` is the access token every API call must carry. Must run
/// on a `tokio::task::LocalSet` (the client's actors do).
pub async fn run(
    listener: TcpListener,
    opts: ClientOptions,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebStartError> {
    let addr = listener.local_addr().map_err(WebStartError::Serve)?;
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let (calls, events, stopping, agent) = agent::start(opts, stop_rx);
    let router = http::router(http::WebState::new(addr, &token, calls, events, stopping));
    // On shutdown the agent stops first: open event streams end with it, so
    // the server's graceful shutdown does not wait on them.
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(());
    };
    // A cap on connections and a deadline per request: other local users
    // reach this port too (see `listener`).
    let listener = listener::BoundedListener::new(
        listener,
        listener::MAX_CONNECTIONS,
        listener::RESPONSE_DEADLINE,
    );
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    // The agent closes the profile as it ends.
    let _ = agent.await;
    served.map_err(WebStartError::Serve)
}
