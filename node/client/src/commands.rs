//! The client commands of the CLI, each a function over a connection.

use std::net::SocketAddr;
use std::path::PathBuf;

use quicnprotochat_crypto::Identity;
use quicnprotochat_crypto::envelope::HybridPublicKey;
use quicnprotochat_crypto::mls::validate_key_package;
use quicnprotochat_wire::IdentityKey;

use crate::key_packages::KeyPackageBatch;
use crate::state::SavedLogin;
use crate::{ClientState, KeyPackageTarget, NodeConnection, SessionHandle};
use quicnprotochat_wire::tls;

pub use crate::key_packages::{DEFAULT_KEY_PACKAGES, PQ_KEY_PACKAGES, REFILL_BELOW};

/// Where and how a client connects; from global flags and environment.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The node, `HOST:PORT`.
    pub server: String,
    /// The certificate to trust (exactly this one), unless `ca_bundle` is set.
    pub ca_cert: PathBuf,
    /// CA certificates to trust instead of one pinned certificate: the node's
    /// certificate must chain to one of them and carry the node's name.
    pub ca_bundle: Option<PathBuf>,
    /// The name the node's certificate must carry with `ca_bundle` [default:
    /// the host of `server`].
    pub server_name: Option<String>,
    /// The profile folder.
    pub state_dir: PathBuf,
    /// The operator's admission token, if the node has one.
    pub auth_token: Option<String>,
    /// Print JSON, one object per line (`--json`), rather than lines for a person.
    pub json: bool,
}

pub use crate::command_error::{
    CommandError, EXIT_FAILED, EXIT_NOT_LOGGED_IN, EXIT_REFUSED, EXIT_UNREACHABLE, KINDS,
};

/// The password: `QPC_PASSWORD` when set, otherwise asked for without echo.
pub fn read_password(confirm: bool) -> Result<String, CommandError> {
    if let Ok(p) = std::env::var("QPC_PASSWORD") {
        if p.is_empty() {
            return Err(CommandError::Password(
                "empty password (QPC_PASSWORD is set but empty)".into(),
            ));
        }
        return Ok(p);
    }
    let p = rpassword::prompt_password("password: ")
        .map_err(|e| CommandError::Password(e.to_string()))?;
    if confirm {
        let again = rpassword::prompt_password("password again: ")
            .map_err(|e| CommandError::Password(e.to_string()))?;
        if again != p {
            return Err(CommandError::Password("the two passwords differ".into()));
        }
    }
    if p.is_empty() {
        return Err(CommandError::Password("empty password".into()));
    }
    Ok(p)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn format_expiry(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if ms == 0 {
        "none (challenge session)".into()
    } else if ms <= now {
        "expired".into()
    } else {
        format!("in {} h", (ms - now) / 3_600_000)
    }
}

/// Generates and uploads `count` one-time KeyPackages (and, with `rotate`, a new
/// last-resort one), plus the hybrid key; saves the KeyPackage secrets first so
/// a package the node hands out can always be used.
async fn upload_key_packages(
    state: &ClientState,
    identity: &Identity,
    session: &SessionHandle,
    count: usize,
    rotate: bool,
) -> Result<(), CommandError> {
    let batch = KeyPackageBatch::generate(state, identity, count, rotate)?;
    for call in batch.calls() {
        session
            .upload_key_packages(&call.one_time, &call.last_resort, &call.hybrid)
            .await?;
    }
    Ok(())
}

/// Tops up the published one-time KeyPackages when few are left. A top-up the
/// node refuses (its disk nearly full) or cannot take is said on stderr and
/// does not fail the command that asked: its own work is done, and the
/// resident client or the next login tries again.
async fn refill_if_low(state: &ClientState, identity: &Identity, session: &SessionHandle) {
    let topped_up = async {
        let (remaining, _) = session.key_package_status().await?;
        match crate::key_packages::refill_count(remaining) {
            0 => Ok(()),
            count => upload_key_packages(state, identity, session, count, false).await,
        }
    };
    if let Err(e) = topped_up.await {
        eprintln!("note: KeyPackages were not topped up: {e}");
    }
}

/// A session for this profile: the remembered login when there is one, else a
/// challenge session for the bare identity.
pub(crate) async fn open_session(
    opts: &ClientOptions,
    conn: &NodeConnection,
    state: &ClientState,
    identity: &Identity,
) -> Result<(SessionHandle, Option<SavedLogin>), CommandError> {
    match state.saved_login()? {
        Some(login) if !login.token.is_empty() => {
            match conn.resume(&login.token, opts.auth_token.as_deref()).await {
                Ok((session, _)) => Ok((session, Some(login))),
                Err(e) if e.code() == Some(quicnprotochat_wire::ErrorCode::Unauthorized) => {
                    Err(CommandError::SessionEnded {
                        username: login.username,
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok((
            conn.authenticate(identity, opts.auth_token.as_deref())
                .await?,
            None,
        )),
    }
}

/// A profile with a live login, connected.
pub(crate) struct LoggedInProfile {
    pub state: ClientState,
    pub identity: Identity,
    pub conn: NodeConnection,
    pub session: SessionHandle,
    pub login: SavedLogin,
}

/// Opens the profile and resumes its login; `NotLoggedIn` when it has none.
pub(crate) async fn logged_in(opts: &ClientOptions) -> Result<LoggedInProfile, CommandError> {
    let conn = opts.connect().await?;
    logged_in_on(opts, conn).await
}

/// [`logged_in`] on a connection made already.
async fn logged_in_on(
    opts: &ClientOptions,
    conn: NodeConnection,
) -> Result<LoggedInProfile, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let (session, login) = open_session(opts, &conn, &state, &identity).await?;
    let Some(login) = login else {
        return Err(CommandError::NotLoggedIn);
    };
    Ok(LoggedInProfile {
        state,
        identity,
        conn,
        session,
        login,
    })
}

/// Logs this profile's device in again with the account password (for what
/// needs it, e.g. removing a device): a fresh password session, remembered.
pub(crate) async fn password_session(
    opts: &ClientOptions,
    password: &str,
) -> Result<(NodeConnection, SessionHandle), CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let Some(login) = state.saved_login()? else {
        return Err(CommandError::NotLoggedIn);
    };
    let conn = opts.connect().await?;
    let logged = login_and_remember(
        &conn,
        &state,
        &identity,
        &login.username,
        password,
        opts.auth_token.as_deref(),
    )
    .await?;
    Ok((conn, logged.session))
}

/// Logs in and remembers the session in the profile.
async fn login_and_remember(
    conn: &NodeConnection,
    state: &ClientState,
    identity: &Identity,
    username: &str,
    password: &str,
    auth_token: Option<&str>,
) -> Result<crate::LoggedIn, CommandError> {
    let logged = conn
        .login(username, password.as_bytes(), identity, auth_token)
        .await?;
    state.save_login(&SavedLogin {
        username: username.to_string(),
        token: logged.token.clone(),
        expires_at_ms: logged.expires_at_ms,
    })?;
    // A profile logging in for the first time starts from the account's devices
    // as they are: only devices that join later are added to its groups. With no
    // group of its own yet, it then looks for the account's groups to rejoin
    // (a new device, or one whose profile was lost).
    if state.known_devices()?.is_empty() {
        let devices = logged.session.devices().await?;
        let devices = devices.into_iter().map(|d| d.0).collect();
        let fresh = state.groups()?.is_empty();
        state.write(|t| {
            t.set_known_devices(&devices)?;
            if fresh {
                t.expect_rejoin()?;
            }
            Ok(())
        })?;
    }
    Ok(logged)
}

/// `register-user`: creates the account with this profile's identity as its first
/// device, logs in, and publishes KeyPackages and the hybrid key.
pub async fn register_user(
    opts: &ClientOptions,
    username: &str,
    password: &str,
) -> Result<String, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let conn = opts.connect().await?;
    enroll(
        &state,
        &conn,
        username,
        password,
        opts.auth_token.as_deref(),
    )
    .await?;
    conn.close().await;
    Ok(format!(
        "registered {username} (identity {}); published {DEFAULT_KEY_PACKAGES} KeyPackages, a last-resort one and the hybrid key",
        hex(&identity.public_key())
    ))
}

/// Registers the account with this profile's identity as its first device, logs
/// in (remembering the session) and publishes KeyPackages and the hybrid key.
pub async fn enroll(
    state: &ClientState,
    conn: &NodeConnection,
    username: &str,
    password: &str,
    auth_token: Option<&str>,
) -> Result<SessionHandle, CommandError> {
    let identity = state.identity()?;
    conn.register(username, password.as_bytes(), &identity, auth_token)
        .await?;
    let logged = login_and_remember(conn, state, &identity, username, password, auth_token).await?;
    upload_key_packages(
        state,
        &identity,
        &logged.session,
        DEFAULT_KEY_PACKAGES,
        true,
    )
    .await?;
    Ok(logged.session)
}

/// `login`: OPAQUE login as this profile's device; remembers the session token.
pub async fn login(
    opts: &ClientOptions,
    username: &str,
    password: &str,
) -> Result<String, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let conn = opts.connect().await?;
    let logged = login_and_remember(
        &conn,
        &state,
        &identity,
        username,
        password,
        opts.auth_token.as_deref(),
    )
    .await?;
    // A new device has published nothing yet; an old one may be running low.
    let (remaining, served) = logged.session.key_package_status().await?;
    if remaining == 0 && served == 0 {
        upload_key_packages(
            &state,
            &identity,
            &logged.session,
            DEFAULT_KEY_PACKAGES,
            true,
        )
        .await?;
    } else {
        refill_if_low(&state, &identity, &logged.session).await;
    }
    conn.close().await;
    Ok(format!(
        "logged in as {username}; session expires {}",
        format_expiry(logged.expires_at_ms)
    ))
}

/// `check-key`: verifies a user's published keys (their hybrid keys and
/// last-resort packages: looking consumes none of their one-time packages), or
/// shows this device's own package count.
pub async fn check_key(
    opts: &ClientOptions,
    username: Option<&str>,
) -> Result<String, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let conn = opts.connect().await?;
    let out = match username {
        Some(name) => {
            // The node serves KeyPackages to registered devices: a session first.
            open_session(opts, &conn, &state, &identity).await?;
            let claimed = conn
                .peek_key_packages(&KeyPackageTarget::Username(name.to_string()))
                .await?;
            let mut lines = Vec::new();
            for c in claimed {
                let hybrid = HybridPublicKey::verify(&c.hybrid_public_key, &c.identity_key.0)
                    .map_err(|e| {
                        CommandError::Invalid(format!(
                            "{name}: hybrid key of device {}: {e}",
                            c.identity_key.to_hex()
                        ))
                    })?;
                let kp = validate_key_package(&c.key_package).map_err(|e| {
                    CommandError::Invalid(format!(
                        "{name}: KeyPackage of device {}: {e}",
                        c.identity_key.to_hex()
                    ))
                })?;
                if kp.identity_key != c.identity_key.0 {
                    return Err(CommandError::Invalid(format!(
                        "{name}: KeyPackage does not belong to device {}",
                        c.identity_key.to_hex()
                    )));
                }
                lines.push(format!(
                    "device {}: hybrid key {} (fingerprint {}), KeyPackage {:?}{} valid",
                    c.identity_key.to_hex(),
                    hex(&hybrid.key_id()),
                    hex(&hybrid.fingerprint()),
                    kp.suite,
                    if c.last_resort { " (last resort)" } else { "" },
                ));
            }
            lines.join("\n")
        }
        None => {
            let (session, _) = open_session(opts, &conn, &state, &identity).await?;
            let (remaining, served) = session.key_package_status().await?;
            format!(
                "{remaining} one-time KeyPackages left; last-resort package served {served} times"
            )
        }
    };
    conn.close().await;
    Ok(out)
}

/// `refresh-keypackage`: uploads fresh one-time packages and rotates the
/// last-resort one.
pub async fn refresh_key_packages(
    opts: &ClientOptions,
    count: usize,
) -> Result<String, CommandError> {
    crate::key_packages::check_count(count)?;
    let LoggedInProfile {
        state,
        identity,
        conn,
        session,
        ..
    } = logged_in(opts).await?;
    upload_key_packages(&state, &identity, &session, count, true).await?;
    let (remaining, _) = session.key_package_status().await?;
    conn.close().await;
    Ok(crate::key_packages::refreshed_text(count, remaining))
}

/// `logout`: revokes the remembered session.
pub async fn logout(opts: &ClientOptions) -> Result<String, CommandError> {
    let LoggedInProfile {
        state,
        conn,
        session,
        login,
        ..
    } = logged_in(opts).await?;
    session.logout().await?;
    state.save_login(&SavedLogin {
        token: Vec::new(),
        ..login
    })?;
    conn.close().await;
    Ok("logged out".into())
}

/// `logout --everywhere`: with the account password (a fresh login), ends
/// every session of every device of the account, this one's too: a stolen
/// token or profile then needs the password again.
pub async fn logout_everywhere(
    opts: &ClientOptions,
    password: &str,
) -> Result<String, CommandError> {
    let (conn, session) = password_session(opts, password).await?;
    let ended = session.logout_everywhere().await?;
    conn.close().await;
    let state = ClientState::open(&opts.state_dir)?;
    if let Some(login) = state.saved_login()? {
        state.save_login(&SavedLogin {
            token: Vec::new(),
            ..login
        })?;
    }
    Ok(format!(
        "logged out everywhere: {ended} session(s) ended; every device of this account must log in again"
    ))
}

/// `change-password`: with the current password (a fresh login), a new one;
/// every other session of the account ends (a leaked password may have opened
/// them), this profile stays logged in.
pub async fn change_password(
    opts: &ClientOptions,
    current: &str,
    new: &str,
) -> Result<String, CommandError> {
    let username = ClientState::open(&opts.state_dir)?
        .saved_login()?
        .ok_or(CommandError::NotLoggedIn)?
        .username;
    let (conn, session) = password_session(opts, current).await?;
    let ended = session.change_password(&username, new.as_bytes()).await?;
    conn.close().await;
    Ok(format!(
        "password changed; {ended} other session(s) of {username} ended (their devices log in with the new password)"
    ))
}

/// The new password of `change-password`: `QPC_NEW_PASSWORD`, or asked twice.
pub fn read_new_password() -> Result<String, CommandError> {
    let p = match std::env::var("QPC_NEW_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            let p = rpassword::prompt_password("new password: ")
                .map_err(|e| CommandError::Password(e.to_string()))?;
            let again = rpassword::prompt_password("new password again: ")
                .map_err(|e| CommandError::Password(e.to_string()))?;
            if again != p {
                return Err(CommandError::Password("the two passwords differ".into()));
            }
            p
        }
    };
    if p.is_empty() {
        return Err(CommandError::Password("empty new password".into()));
    }
    Ok(p)
}

/// `devices`: every device of this account, this one marked.
pub async fn devices(opts: &ClientOptions) -> Result<String, CommandError> {
    let conn = match opts.connect_for_read().await {
        Err(e) if e.kind() == "unreachable" => {
            // As the profile last saw them (device sync keeps the list).
            let state = ClientState::open(&opts.state_dir)?;
            let login = state
                .saved_login()?
                .filter(|l| !l.token.is_empty())
                .ok_or(CommandError::NotLoggedIn)?;
            let me = IdentityKey(state.identity()?.public_key());
            let known = devices_last_seen(&state, &me)?;
            eprintln!("note: the node is unreachable: the devices as this profile last saw them");
            return Ok(devices_text(&known, &me, &login.username));
        }
        other => other?,
    };
    let LoggedInProfile {
        conn,
        session,
        identity,
        login,
        ..
    } = logged_in_on(opts, conn).await?;
    let devices = session.devices().await?;
    conn.close().await;
    Ok(devices_text(
        &devices,
        &IdentityKey(identity.public_key()),
        &login.username,
    ))
}

/// The account's devices as the profile last settled its groups with them
/// (`me` among them).
pub(crate) fn devices_last_seen(
    state: &ClientState,
    me: &IdentityKey,
) -> Result<Vec<IdentityKey>, crate::state::StateError> {
    let mut known: Vec<IdentityKey> = state
        .known_devices()?
        .into_iter()
        .map(IdentityKey)
        .collect();
    if !known.contains(me) {
        known.insert(0, *me);
    }
    Ok(known)
}

/// `devices`' lines: every device of `username`'s account, `me` marked.
pub(crate) fn devices_text(devices: &[IdentityKey], me: &IdentityKey, username: &str) -> String {
    let mut out = format!("{} device(s) of {username}:", devices.len());
    for d in devices {
        out.push_str(&format!(
            "\n  {}{}",
            d.to_hex(),
            if d == me { "  (this device)" } else { "" }
        ));
    }
    out
}

/// Parses a hex identity key given on the command line.
pub fn parse_identity(hex_key: &str) -> Result<IdentityKey, CommandError> {
    let bytes = (0..hex_key.len())
        .step_by(2)
        .map(|i| {
            hex_key
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| CommandError::Invalid(format!("{hex_key:?} is not hex")))?;
    IdentityKey::from_wire(&bytes, "identity key").map_err(|e| CommandError::Invalid(e.detail))
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

    /// Opens a connection to the configured server, trusting what
    /// [`Self::trust`] says.
    pub async fn connect(&self) -> Result<NodeConnection, CommandError> {
        let addr = self.server_addr()?;
        Ok(NodeConnection::connect(addr, self.trust()?).await?)
    }

    /// [`Self::connect`] for a command that can answer from the profile: the
    /// node counts as unreachable after [`crate::group_commands::READ_CONNECT_WITHIN`].
    pub async fn connect_for_read(&self) -> Result<NodeConnection, CommandError> {
        let within = crate::group_commands::READ_CONNECT_WITHIN;
        match tokio::time::timeout(within, self.connect()).await {
            Ok(connected) => connected,
            Err(_) => Err(CommandError::Client(crate::ClientError::Unreachable {
                addr: self.server_addr()?,
                reason: format!("no answer within {} ms", within.as_millis()),
            })),
        }
    }

    /// The pinned certificate, or with a CA bundle its authorities and the
    /// name the node's certificate must carry.
    pub fn trust(&self) -> Result<tls::ServerTrust, CommandError> {
        let (path, read) = match &self.ca_bundle {
            None => (
                &self.ca_cert,
                tls::read_pinned_cert(&self.ca_cert).map(Into::into),
            ),
            Some(bundle) => (bundle, self.authorities(bundle)),
        };
        read.map_err(|e| CommandError::CaCert {
            path: path.clone(),
            reason: match e {
                tls::TlsError::Read { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })
    }

    fn authorities(&self, bundle: &std::path::Path) -> Result<tls::ServerTrust, tls::TlsError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            // `HOST:PORT`, `[V6]:PORT`: the host part.
            None => self
                .server
                .rsplit_once(':')
                .map_or(self.server.as_str(), |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        Ok(tls::ServerTrust::Authorities {
            roots: tls::read_ca_bundle(bundle)?,
            name: tls::server_name(&name)?,
        })
    }

    /// The node as the client's session actor reaches it (and reaches it again,
    /// for up to `reconnect_patience`, after a lost connection).
    pub fn node_address(
        &self,
        reconnect_patience: std::time::Duration,
    ) -> Result<crate::actors::NodeAddress, CommandError> {
        Ok(crate::actors::NodeAddress {
            addr: self.server_addr()?,
            trust: self.trust()?,
            auth_token: self.auth_token.clone(),
            reconnect_patience,
            endpoint: None,
            connect_within: None,
            fail_fast: None,
        })
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

/// `whoami`: what the node knows of this profile: identity, and once logged in
/// the username, device count and session expiry.
pub async fn whoami(opts: &ClientOptions) -> Result<String, CommandError> {
    let state = ClientState::open(&opts.state_dir)?;
    let identity = state.identity()?;
    let conn = match opts.connect_for_read().await {
        Err(e) if e.kind() == "unreachable" => {
            // What the profile knows: who it is, and its account.
            let id = format!("identity {}", hex(&identity.public_key()));
            eprintln!("note: the node is unreachable: device count and session expiry unknown");
            return Ok(match state.saved_login()? {
                Some(login) if !login.token.is_empty() => format!("{} ({id})", login.username),
                _ => id,
            });
        }
        other => other?,
    };
    let (session, login) = open_session(opts, &conn, &state, &identity).await?;
    let me = session.whoami().await?;
    if login.is_some() {
        refill_if_low(&state, &identity, &session).await;
    }
    conn.close().await;
    Ok(whoami_line(&me))
}

/// `whoami`'s line for what the node said.
pub(crate) fn whoami_line(me: &crate::rpc::WhoAmI) -> String {
    let line = format!("identity {}", me.identity_key.to_hex());
    if me.username.is_empty() {
        return line;
    }
    format!(
        "{} ({line}); {} device(s); session expires {}",
        me.username,
        me.device_count,
        format_expiry(me.expires_at_ms)
    )
}
