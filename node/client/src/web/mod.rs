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
//! Shape: [`serve`] binds nothing itself (mini-redis' `server::run(listener,
//! shutdown)`); the resident client (`crate::resident`, started by
//! `crate::daemon`) owns the profile's [`Messenger`] on the caller's `LocalSet`
//! and serializes every call to it; [`http`] is the thin HTTP glue.
//!
//! [`Messenger`]: crate::messenger::Messenger

pub mod http;
pub mod listener;
pub mod views;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::resident::Handles;

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

/// Serves the UI of the resident client behind `resident` on `listener` until
/// `shutdown` completes; `token` is the access token every API call must carry.
/// The resident client is the caller's to stop (`crate::daemon::run` does, first,
/// so that open event streams end with it).
pub async fn serve(
    listener: TcpListener,
    resident: Handles,
    token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebStartError> {
    let addr = listener.local_addr().map_err(WebStartError::Serve)?;
    let mut stopping = resident.stopping.clone();
    let router = http::router(http::WebState::new(addr, &token, resident));
    let (signalled, mut on_signal) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = signalled.send(true);
        // Event streams end once the resident client stops.
        let _ = stopping.wait_for(|s| *s).await;
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
        .into_future();
    // Graceful work gets a deadline once the signal came: a call waiting on a
    // node that is gone (or a login still reconnecting) must not keep the
    // process alive.
    let grace_over = async {
        let _ = on_signal.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = served => served.map_err(WebStartError::Serve),
        () = grace_over => {
            eprintln!(
                "stopped without waiting for the calls in flight (the node did not answer within {} ms)",
                SHUTDOWN_GRACE.as_millis()
            );
            Ok(())
        }
    }
}

/// How long `web` waits for work in flight after SIGINT or SIGTERM, and then
/// again for the profile's agent (two graceful steps, within the process's
/// deadline: `crate::shutdown`).
pub const SHUTDOWN_GRACE: std::time::Duration = crate::shutdown::FINISHING;
