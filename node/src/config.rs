//! Server configuration: defaults, then the TOML file, then flags (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quicnprotochat_actors::core::admission::AdmissionConfig;
use quicnprotochat_actors::core::budget::BudgetConfig;
use quicnprotochat_actors::core::rate::RateConfig;
use quicnprotochat_actors::store::server::DEFAULT_CACHE_BYTES;
use quicnprotochat_wire::limits::{DEFAULT_MAX_PAYLOAD, DEFAULT_QUEUE_LIMIT};
use serde::Deserialize;

use crate::tokens::{MIN_OPERATOR_TOKEN_BITS, token_strength_bits};

/// Default listen address: loopback only, so a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "data";

#[derive(Debug, thiserror::Error)]
/// Why the configuration was refused.
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    /// The config file could not be read.
    Read {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    /// The config file is not valid TOML for us.
    Parse {
        /// The file or folder concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error("invalid setting: {0}")]
    /// A value out of range (which, why).
    Invalid(String),
}

/// The TOML file's keys; every one optional, names mirror the flags.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen`
    pub listen: Option<SocketAddr>,
    /// `data_dir`
    pub data_dir: Option<PathBuf>,
    /// `store`
    pub store: Option<String>,
    /// `tls_cert`
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`
    pub tls_key: Option<PathBuf>,
    /// `auth_token`
    pub auth_token: Option<String>,
    /// `operator_token`
    pub operator_token: Option<String>,
    /// `queue_limit`
    pub queue_limit: Option<u64>,
    /// `max_payload`
    pub max_payload: Option<usize>,
    /// `sealed_sender`
    pub sealed_sender: Option<bool>,
    /// `metrics_listen`
    pub metrics_listen: Option<SocketAddr>,
    /// `rpc_threads`
    pub rpc_threads: Option<usize>,
    /// `[rate_limits]`
    pub rate_limits: Option<RateLimitsFile>,
    /// `[limits]`
    pub limits: Option<LimitsFile>,
}

/// `[limits]` in the TOML file: what the node holds at most; unset keys keep
/// their defaults.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// `connections`
    pub connections: Option<u32>,
    /// `connections_per_address`
    pub connections_per_address: Option<u32>,
    /// `calls_per_connection`
    pub calls_per_connection: Option<u32>,
    /// `bytes_per_connection`
    pub bytes_per_connection: Option<u64>,
    /// `bytes_in_flight`
    pub bytes_in_flight: Option<u64>,
    /// `long_polls_per_inbox`
    pub long_polls_per_inbox: Option<u32>,
    /// `live_inboxes`
    pub live_inboxes: Option<u32>,
    /// `store_cache_bytes`
    pub store_cache_bytes: Option<usize>,
    /// `groups_per_device`
    pub groups_per_device: Option<u64>,
    /// `reply_bytes_per_connection`
    pub reply_bytes_per_connection: Option<u64>,
    /// `devices_per_account`
    pub devices_per_account: Option<u32>,
    /// `reply_stall_secs`
    pub reply_stall_secs: Option<u64>,
    /// `session_idle_secs`
    pub session_idle_secs: Option<u64>,
    /// `min_free_disk_bytes`
    pub min_free_disk_bytes: Option<u64>,
    /// `group_info_bytes_per_device`
    pub group_info_bytes_per_device: Option<u64>,
}

/// What the node holds at most, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connection caps.
    pub admission: AdmissionConfig,
    /// Calls-in-flight caps.
    pub budget: BudgetConfig,
    /// Long-polls (`fetchWait`) waiting on one inbox at once.
    pub long_polls_per_inbox: u32,
    /// Inbox actors alive at once; past it, idle ones retire early.
    pub live_inboxes: u32,
    /// Page cache of the node's database.
    pub store_cache_bytes: usize,
    /// Groups one device may create (fences it started that are still kept).
    pub groups_per_device: u64,
    /// A connection whose replies stay unwritten (its peer reads nothing) this
    /// long is closed.
    pub reply_stall: Duration,
    /// Devices one account may have (a login from one more is refused).
    pub devices_per_account: u32,
    /// How long a session token lives unused (each resume moves its end).
    pub session_idle: Duration,
    /// The disk's high-water mark: below this much free space where the store
    /// lives, new accounts, devices, groups and uploads get `STORAGE_FULL`
    /// (0: not watched).
    pub min_free_disk_bytes: u64,
    /// Bytes of kept GroupInfos one device may have published (a commit past
    /// it goes through, its GroupInfo not kept).
    pub group_info_bytes_per_device: u64,
}

/// Default of `devices_per_account`: a person's phones, computers and
/// browsers, with room to spare.
pub const DEFAULT_DEVICES_PER_ACCOUNT: u32 = 16;

/// Default of `reply_stall_secs`: far past any network hiccup, short enough
/// that unread replies do not sit in memory for minutes.
pub const DEFAULT_REPLY_STALL: Duration = Duration::from_secs(30);

/// The longest `session_idle_secs`: a token unused for a year is forgotten.
pub const MAX_SESSION_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Default of `min_free_disk_bytes`: room left for the messages, acks and
/// commits still taken, and for the store's own bookkeeping.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1 << 30;

/// Default of `group_info_bytes_per_device`: 64 GroupInfos of the largest
/// groups, or thousands of small ones (a few KiB each).
pub const DEFAULT_GROUP_INFO_BYTES_PER_DEVICE: u64 = 64 << 20;

/// Default of `long_polls_per_inbox`: a few devices' worth of reconnects.
pub const DEFAULT_LONG_POLLS_PER_INBOX: u32 = 8;
/// Default of `groups_per_device`: far beyond a person's, far below a disk's worth.
pub const DEFAULT_GROUPS_PER_DEVICE: u64 = 10_000;
/// Default of `live_inboxes` (~3 KiB each: ~150 MiB at most).
pub const DEFAULT_LIVE_INBOXES: u32 = 50_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            admission: AdmissionConfig::default(),
            budget: BudgetConfig::default(),
            long_polls_per_inbox: DEFAULT_LONG_POLLS_PER_INBOX,
            live_inboxes: DEFAULT_LIVE_INBOXES,
            store_cache_bytes: DEFAULT_CACHE_BYTES,
            groups_per_device: DEFAULT_GROUPS_PER_DEVICE,
            reply_stall: DEFAULT_REPLY_STALL,
            devices_per_account: DEFAULT_DEVICES_PER_ACCOUNT,
            session_idle: quicnprotochat_actors::auth::DEFAULT_SESSION_IDLE,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            group_info_bytes_per_device: DEFAULT_GROUP_INFO_BYTES_PER_DEVICE,
        }
    }
}

impl LimitsFile {
    fn resolve(self, max_payload: usize) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let l = Limits {
            admission: AdmissionConfig {
                connections: self.connections.unwrap_or(d.admission.connections),
                connections_per_address: self
                    .connections_per_address
                    .unwrap_or(d.admission.connections_per_address),
            },
            budget: BudgetConfig {
                calls_per_connection: self
                    .calls_per_connection
                    .unwrap_or(d.budget.calls_per_connection),
                bytes_per_connection: self
                    .bytes_per_connection
                    .unwrap_or(d.budget.bytes_per_connection),
                bytes_per_node: self.bytes_in_flight.unwrap_or(d.budget.bytes_per_node),
                reply_bytes_per_connection: self
                    .reply_bytes_per_connection
                    .unwrap_or(d.budget.reply_bytes_per_connection),
            },
            long_polls_per_inbox: self.long_polls_per_inbox.unwrap_or(d.long_polls_per_inbox),
            live_inboxes: self.live_inboxes.unwrap_or(d.live_inboxes),
            store_cache_bytes: self.store_cache_bytes.unwrap_or(d.store_cache_bytes),
            groups_per_device: self.groups_per_device.unwrap_or(d.groups_per_device),
            reply_stall: self
                .reply_stall_secs
                .map_or(d.reply_stall, Duration::from_secs),
            devices_per_account: self.devices_per_account.unwrap_or(d.devices_per_account),
            session_idle: self
                .session_idle_secs
                .map_or(d.session_idle, Duration::from_secs),
            min_free_disk_bytes: self.min_free_disk_bytes.unwrap_or(d.min_free_disk_bytes),
            group_info_bytes_per_device: self
                .group_info_bytes_per_device
                .unwrap_or(d.group_info_bytes_per_device),
        };
        let counts = [
            l.admission.connections,
            l.admission.connections_per_address,
            l.budget.calls_per_connection,
            l.long_polls_per_inbox,
            l.live_inboxes,
            l.devices_per_account,
        ];
        if counts.contains(&0)
            || l.budget.bytes_per_connection == 0
            || l.budget.reply_bytes_per_connection == 0
            || l.groups_per_device == 0
            || l.group_info_bytes_per_device == 0
            || l.reply_stall.is_zero()
            || l.session_idle.is_zero()
        {
            return Err(ConfigError::Invalid("limits must be at least 1".into()));
        }
        if l.session_idle > MAX_SESSION_IDLE {
            return Err(ConfigError::Invalid(format!(
                "session_idle_secs may be at most {} (a year)",
                MAX_SESSION_IDLE.as_secs()
            )));
        }
        if l.budget.bytes_per_connection < max_payload as u64
            || l.budget.bytes_per_node < l.budget.bytes_per_connection
        {
            return Err(ConfigError::Invalid(
                "limits: bytes_per_connection must hold at least one max_payload, and \
                 bytes_in_flight at least one connection's bytes"
                    .into(),
            ));
        }
        Ok(l)
    }
}

/// `[rate_limits]` in the TOML file; unset keys keep their defaults.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// `enqueue_per_sec_per_session`
    pub enqueue_per_sec_per_session: Option<u32>,
    /// `enqueue_per_sec_per_address`
    pub enqueue_per_sec_per_address: Option<u32>,
    /// `logins_per_min_per_address`
    pub logins_per_min_per_address: Option<u32>,
    /// `claims_per_min_per_requester`
    pub claims_per_min_per_requester: Option<u32>,
    /// `claims_per_min_per_target`
    pub claims_per_min_per_target: Option<u32>,
    /// `claims_per_min_per_device`
    pub claims_per_min_per_device: Option<u32>,
}

impl RateLimitsFile {
    fn resolve(self) -> Result<RateConfig, ConfigError> {
        let d = RateConfig::default();
        let c = RateConfig {
            enqueue_per_sec_per_session: self
                .enqueue_per_sec_per_session
                .unwrap_or(d.enqueue_per_sec_per_session),
            enqueue_per_sec_per_address: self
                .enqueue_per_sec_per_address
                .unwrap_or(d.enqueue_per_sec_per_address),
            logins_per_min_per_address: self
                .logins_per_min_per_address
                .unwrap_or(d.logins_per_min_per_address),
            claims_per_min_per_requester: self
                .claims_per_min_per_requester
                .unwrap_or(d.claims_per_min_per_requester),
            claims_per_min_per_target: self
                .claims_per_min_per_target
                .unwrap_or(d.claims_per_min_per_target),
            claims_per_min_per_device: self
                .claims_per_min_per_device
                .unwrap_or(d.claims_per_min_per_device),
        };
        let all = [
            c.enqueue_per_sec_per_session,
            c.enqueue_per_sec_per_address,
            c.logins_per_min_per_address,
            c.claims_per_min_per_requester,
            c.claims_per_min_per_target,
            c.claims_per_min_per_device,
        ];
        if all.contains(&0) {
            return Err(ConfigError::Invalid(
                "rate limits must be at least 1".into(),
            ));
        }
        Ok(c)
    }
}

impl FileConfig {
    /// Reads a config file. Relative paths in it (`data_dir`, `tls_cert`,
    /// `tls_key`) are relative to the file's folder, wherever the node is started
    /// from; only the data folder's default (no key) follows the working directory.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_string(),
        })?;
        let folder = path.parent().unwrap_or(Path::new(""));
        for p in [&mut file.data_dir, &mut file.tls_cert, &mut file.tls_key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        }
        Ok(file)
    }

    /// Layers `over` on top of `self`: every key `over` sets wins.
    pub fn overridden_by(self, over: FileConfig) -> FileConfig {
        FileConfig {
            listen: over.listen.or(self.listen),
            data_dir: over.data_dir.or(self.data_dir),
            store: over.store.or(self.store),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
            auth_token: over.auth_token.or(self.auth_token),
            operator_token: over.operator_token.or(self.operator_token),
            queue_limit: over.queue_limit.or(self.queue_limit),
            max_payload: over.max_payload.or(self.max_payload),
            sealed_sender: over.sealed_sender.or(self.sealed_sender),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            rpc_threads: over.rpc_threads.or(self.rpc_threads),
            rate_limits: over.rate_limits.or(self.rate_limits),
            limits: over.limits.or(self.limits),
        }
    }
}

/// Refuses a `store` that is not a PostgreSQL URL (the redb file needs none).
fn check_store_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "store must be a PostgreSQL URL (postgres://USER@HOST:PORT/DB), not {:?}; \
             leave it unset for the embedded database in data_dir",
            redact_url(url)
        )))
    }
}

/// `url` without the password its user part may carry, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsed>".into();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:<redacted>@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Everything a node needs to run.
#[derive(Clone)]
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the database and generated key live.
    pub data_dir: PathBuf,
    /// The PostgreSQL database the node keeps its tables in
    /// (`postgres://USER@HOST:PORT/DB`); `None`: the redb file in `data_dir`.
    pub store: Option<String>,
    /// Certificate and key (PEM or DER); when unset, a self-signed pair is generated in
    /// `data_dir` on first start and reused.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Operator admission token; `None` admits everyone.
    pub auth_token: Option<String>,
    /// The operator's token for account administration on the running node
    /// (`admin --server`); `None`: only on a stopped node's data.
    pub operator_token: Option<String>,
    /// Unacknowledged messages per inbox.
    pub queue_limit: u64,
    /// Largest payload stored.
    pub max_payload: usize,
    /// How long an inbox actor lingers without requests before it stops.
    pub idle_inbox_after: Duration,
    /// Serve `enqueueSealed` (sealed-sender delivery without a session).
    pub sealed_sender: bool,
    /// Rate limits.
    pub rate_limits: RateConfig,
    /// Where to serve Prometheus metrics over HTTP; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// What the node holds at most (connections, calls, waiters, actors).
    pub limits: Limits,
    /// Threads that serve connections' Cap'n Proto RPC (default: one per core).
    pub rpc_threads: usize,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_deref().map(redact_url))
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "operator_token",
                &self.operator_token.as_ref().map(|_| "<redacted>"),
            )
            .field("queue_limit", &self.queue_limit)
            .field("max_payload", &self.max_payload)
            .field("sealed_sender", &self.sealed_sender)
            .field("rate_limits", &self.rate_limits)
            .field("metrics_listen", &self.metrics_listen)
            .field("limits", &self.limits)
            .field("rpc_threads", &self.rpc_threads)
            .finish()
    }
}

impl ServerConfig {
    /// Builds the configuration from layered settings, filling defaults.
    pub fn from_settings(s: FileConfig) -> Result<ServerConfig, ConfigError> {
        let queue_limit = s.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT);
        if queue_limit == 0 {
            return Err(ConfigError::Invalid(
                "queue_limit must be at least 1".into(),
            ));
        }
        let max_payload = s.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD);
        if max_payload == 0 || max_payload > 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_payload must be between 1 byte and 64 MiB".into(),
            ));
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        if let Some(url) = &s.store {
            check_store_url(url)?;
        }
        if s.auth_token.as_deref() == Some("") {
            return Err(ConfigError::Invalid("auth_token must not be empty".into()));
        }
        if let Some(bits) = s.operator_token.as_deref().map(token_strength_bits)
            && bits < MIN_OPERATOR_TOKEN_BITS
        {
            return Err(ConfigError::Invalid(format!(
                "operator_token is too weak (about {bits} bits; it administers accounts over the \
                 network and needs at least {MIN_OPERATOR_TOKEN_BITS}): make one with \
                 `quicnprotochat server --generate-operator-token`"
            )));
        }
        Ok(ServerConfig {
            listen: s
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
            data_dir: s
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            store: s.store,
            tls_cert: s.tls_cert,
            tls_key: s.tls_key,
            auth_token: s.auth_token,
            operator_token: s.operator_token,
            queue_limit,
            max_payload,
            idle_inbox_after: Duration::from_secs(30),
            sealed_sender: s.sealed_sender.unwrap_or(false),
            rate_limits: s.rate_limits.unwrap_or_default().resolve()?,
            metrics_listen: s.metrics_listen,
            limits: s.limits.unwrap_or_default().resolve(max_payload)?,
            rpc_threads: match s.rpc_threads {
                Some(0) => {
                    return Err(ConfigError::Invalid(
                        "rpc_threads must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(2, |n| n.get()),
            },
        })
    }

    /// Defaults with the given data directory, listening on an ephemeral port:
    /// what tests and the embedded demo start from.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let mut c = ServerConfig::from_settings(FileConfig::default()).expect("defaults are valid");
        c.listen = "127.0.0.1:0".parse().expect("valid address");
        c.data_dir = data_dir.into();
        // A throwaway node's disk is the machine's scratch space, not a
        // server's: it is not watched (a test asks for the mark itself).
        c.limits.min_free_disk_bytes = 0;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../quicnprotochat.example.toml");

    #[test]
    fn a_session_idle_time_of_zero_or_over_a_year_is_refused() {
        for (secs, says) in [(0, "at least 1"), (366 * 24 * 3600, "at most")] {
            let file = FileConfig {
                limits: Some(LimitsFile {
                    session_idle_secs: Some(secs),
                    ..LimitsFile::default()
                }),
                ..FileConfig::default()
            };
            let err = ServerConfig::from_settings(file).unwrap_err().to_string();
            assert!(err.contains(says), "{secs}: {err}");
        }
    }

    #[test]
    fn relative_paths_in_a_config_file_are_relative_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let path = etc.join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"var/data\"\ntls_cert = \"/abs/cert.der\"\ntls_key = \"key.der\"\n",
        )
        .unwrap();
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(file.data_dir, Some(etc.join("var/data")));
        assert_eq!(file.tls_cert, Some(PathBuf::from("/abs/cert.der")));
        assert_eq!(file.tls_key, Some(etc.join("key.der")));
        // Flags stay relative to where the node is started.
        let flags = FileConfig {
            data_dir: Some(PathBuf::from("here")),
            ..FileConfig::default()
        };
        assert_eq!(
            file.overridden_by(flags).data_dir,
            Some(PathBuf::from("here"))
        );
    }

    #[test]
    fn the_example_config_holds_the_defaults_and_names_every_key() {
        // As shipped, it configures exactly the defaults.
        let example: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let from_example = ServerConfig::from_settings(example).unwrap();
        let defaults = ServerConfig::from_settings(FileConfig::default()).unwrap();
        assert_eq!(format!("{from_example:?}"), format!("{defaults:?}"));
        // With its commented-out keys switched on, every key has a value: a key
        // added to the config types and not to the example fails here.
        let all: String = EXAMPLE
            .lines()
            .map(|l| {
                match l
                    .strip_prefix("# ")
                    .and_then(|r| Some((r, r.split_once(" = ")?)))
                {
                    Some((rest, (key, _)))
                        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
                    {
                        rest
                    }
                    _ => l,
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let FileConfig {
            listen,
            data_dir,
            store,
            tls_cert,
            tls_key,
            auth_token,
            operator_token,
            queue_limit,
            max_payload,
            sealed_sender,
            metrics_listen,
            rpc_threads,
            rate_limits,
            limits,
        } = toml::from_str(&all).unwrap();
        assert!(listen.is_some() && data_dir.is_some() && tls_cert.is_some());
        assert!(tls_key.is_some() && auth_token.is_some() && queue_limit.is_some());
        assert!(operator_token.is_some() && store.is_some());
        assert!(max_payload.is_some() && sealed_sender.is_some() && metrics_listen.is_some());
        assert!(rpc_threads.is_some());
        let RateLimitsFile {
            enqueue_per_sec_per_session,
            enqueue_per_sec_per_address,
            logins_per_min_per_address,
            claims_per_min_per_requester,
            claims_per_min_per_target,
            claims_per_min_per_device,
        } = rate_limits.unwrap();
        assert!(enqueue_per_sec_per_session.is_some() && enqueue_per_sec_per_address.is_some());
        assert!(logins_per_min_per_address.is_some() && claims_per_min_per_requester.is_some());
        assert!(claims_per_min_per_target.is_some() && claims_per_min_per_device.is_some());
        let LimitsFile {
            connections,
            connections_per_address,
            calls_per_connection,
            bytes_per_connection,
            bytes_in_flight,
            long_polls_per_inbox,
            live_inboxes,
            store_cache_bytes,
            groups_per_device,
            reply_bytes_per_connection,
            reply_stall_secs,
            devices_per_account,
            session_idle_secs,
            min_free_disk_bytes,
            group_info_bytes_per_device,
        } = limits.unwrap();
        assert!(connections.is_some() && connections_per_address.is_some());
        assert!(calls_per_connection.is_some() && bytes_per_connection.is_some());
        assert!(bytes_in_flight.is_some() && long_polls_per_inbox.is_some());
        assert!(live_inboxes.is_some() && store_cache_bytes.is_some());
        assert!(groups_per_device.is_some() && reply_bytes_per_connection.is_some());
        assert!(reply_stall_secs.is_some() && devices_per_account.is_some());
        assert!(session_idle_secs.is_some() && min_free_disk_bytes.is_some());
        assert!(group_info_bytes_per_device.is_some());
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nqueue_limit = 5\nmax_payload = 100\n")
                .unwrap();
        let flags = FileConfig {
            queue_limit: Some(7),
            ..FileConfig::default()
        };
        let c = ServerConfig::from_settings(file.overridden_by(flags)).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.queue_limit, 7);
        assert_eq!(c.max_payload, 100);
        assert_eq!(c.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let zero_rate: FileConfig =
            toml::from_str("[rate_limits]\nlogins_per_min_per_address = 0\n").unwrap();
        assert!(ServerConfig::from_settings(zero_rate).is_err());
        let rates: FileConfig =
            toml::from_str("sealed_sender = true\n[rate_limits]\nclaims_per_min_per_target = 5\n")
                .unwrap();
        let c = ServerConfig::from_settings(rates).unwrap();
        assert!(c.sealed_sender);
        assert_eq!(c.rate_limits.claims_per_min_per_target, 5);
        assert_eq!(
            c.rate_limits.logins_per_min_per_address,
            RateConfig::default().logins_per_min_per_address
        );
        let zero = FileConfig {
            queue_limit: Some(0),
            ..FileConfig::default()
        };
        assert!(ServerConfig::from_settings(zero).is_err());
        let limits: FileConfig =
            toml::from_str("[limits]\nconnections_per_address = 3\nlong_polls_per_inbox = 2\n")
                .unwrap();
        let c = ServerConfig::from_settings(limits).unwrap();
        assert_eq!(c.limits.admission.connections_per_address, 3);
        assert_eq!(c.limits.long_polls_per_inbox, 2);
        assert_eq!(c.limits.budget, BudgetConfig::default());
        for bad in [
            "[limits]\nconnections = 0\n",
            "[limits]\nbytes_per_connection = 1000\n",
            "[limits]\nbytes_in_flight = 1048576\nbytes_per_connection = 2097152\n",
            "[limits]\nlive_actors = 5\n",
        ] {
            let parsed = toml::from_str::<FileConfig>(bad);
            assert!(
                parsed.is_err() || ServerConfig::from_settings(parsed.unwrap()).is_err(),
                "{bad}"
            );
        }
        let half_tls = FileConfig {
            tls_cert: Some("c.der".into()),
            ..FileConfig::default()
        };
        assert!(ServerConfig::from_settings(half_tls).is_err());
    }

    #[test]
    fn debug_hides_the_tokens() {
        let c = ServerConfig::from_settings(FileConfig {
            auth_token: Some("hunter2".into()),
            operator_token: Some("correct horse battery staple".into()),
            ..FileConfig::default()
        })
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("staple"));
    }

    #[test]
    fn a_short_operator_token_is_refused() {
        let short = FileConfig {
            operator_token: Some("hunter2".into()),
            ..FileConfig::default()
        };
        let e = ServerConfig::from_settings(short).unwrap_err().to_string();
        assert!(e.contains("operator_token is too weak"), "{e}");
    }
}
