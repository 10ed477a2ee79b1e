//! `quicnprotochat daemon`: one process owns a profile (its database, its
//! connection, its actor tree: the resident client, `crate::resident`) and
//! serves it on a Unix socket, `daemon.sock` in the profile folder (0600), in
//! newline-delimited JSON-RPC 2.0 (`jsonrpc`, `docs/daemon.md`). The CLI's
//! commands go through it while it runs (`client`; `chat` on its events);
//! `--web` serves the web UI
//! from the same process.
//!
//! Shape: [`bind`] takes the profile and the socket, [`run`] serves until the
//! shutdown future completes (mini-redis' `server::run(listener, shutdown)`).

pub mod chat;
pub mod client;
pub mod jsonrpc;
pub mod socket;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};

use crate::commands::ClientOptions;
use crate::state::StateError;
use crate::state::owner::ProfileOwner;
use crate::web::{self, SHUTDOWN_GRACE, WebStartError};

/// The socket's name inside the profile folder.
pub const SOCKET_FILE: &str = "daemon.sock";

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The profile is another process's, or cannot be opened.
    #[error(transparent)]
    Profile(#[from] StateError),
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The web UI failed.
    #[error(transparent)]
    Web(#[from] WebStartError),
}

/// The daemon's socket, bound, with the profile held for this process.
pub struct DaemonListener {
    listener: UnixListener,
    file: SocketFile,
    _owner: Arc<ProfileOwner>,
}

impl DaemonListener {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// The socket's file, removed when the daemon is done with it (served, or
/// failed to start after binding).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The socket path of the profile in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Takes the profile in `dir` for this process (refused with the owner's pid
/// when another has it) and binds its socket, owner-only. A socket file left
/// by a daemon that died is removed first: holding the profile proves nobody
/// serves it.
pub fn bind(dir: &Path) -> Result<DaemonListener, DaemonError> {
    quicnprotochat_crypto::private_fs::private_dir(dir).map_err(|source| StateError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let owner = ProfileOwner::take(dir)?;
    // A profile that cannot be opened is said now, not at the first call.
    drop(crate::ClientState::open(dir)?);
    let path = socket_path(dir);
    let failed = |source| DaemonError::Socket {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale daemon socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let listener = UnixListener::bind(&path).map_err(failed)?;
    // The folder is owner-only already; the socket too, in case it is moved
    // or the folder widened.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(DaemonListener {
        listener,
        file: SocketFile(path),
        _owner: owner,
    })
}

/// The web UI a daemon serves beside its socket.
pub struct WebFront {
    /// Its bound listener (`web::bind`).
    pub listener: TcpListener,
    /// The access token its API takes.
    pub token: String,
}

/// Serves the profile in `opts` on `daemon` (and the web UI on `web`) until
/// `shutdown` completes. Must run on a `tokio::task::LocalSet` (the client's
/// actors do). On return the socket file is gone and the profile closed.
pub async fn run(
    daemon: DaemonListener,
    opts: ClientOptions,
    web: Option<WebFront>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let (resident, agent) = crate::resident::start(opts, stop_rx);
    // One signal, two fronts: the web server gets its own view of it.
    let (signalled, on_signal) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signalled.send(true);
        let _ = stop.send(());
    });
    let DaemonListener {
        listener,
        file,
        _owner,
    } = daemon;
    let socket = socket::serve(listener, resident.clone(), on_signal.clone());
    let served = match web {
        None => {
            socket.await;
            Ok(())
        }
        Some(WebFront { listener, token }) => {
            let mut on_signal = on_signal.clone();
            let web_stop = async move {
                let _ = on_signal.wait_for(|s| *s).await;
            };
            let (_, served) = tokio::join!(socket, web::serve(listener, resident, token, web_stop));
            served.map_err(DaemonError::from)
        }
    };
    drop(on_signal);
    // The resident client closes the profile as it ends; what it had not
    // written is the profile's to recover (its store is crash-safe).
    if tokio::time::timeout(SHUTDOWN_GRACE, agent).await.is_err() {
        eprintln!("stopped before the profile's agent finished (the node did not answer)");
    }
    // The socket goes before the profile's hold.
    drop(file);
    drop(_owner);
    served
}
