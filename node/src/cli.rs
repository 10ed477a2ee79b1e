//! The command line: every subcommand with its own flags and a line of help on
//! every argument. Client commands share [`ClientFlags`]; `server` has its own.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use quicnprotochat_client::commands;

#[derive(Parser)]
#[command(
    name = "quicnprotochat",
    version,
    propagate_version = true,
    about = "End-to-end encrypted group messaging over QUIC",
    long_about = "End-to-end encrypted group messaging over QUIC + TLS 1.3 + MLS.\n\
                  One binary: `server` runs a node; every other command is a client \
                  of one (see `demo` for all of it at once)."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a client command reaches its node, and where its profile lives.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientFlags {
    /// Server to connect to (HOST:PORT).
    #[arg(long, env = "QPC_SERVER", default_value = "127.0.0.1:7000")]
    pub(crate) server: String,
    #[command(flatten)]
    pub(crate) trust: TrustFlags,
    /// Profile directory (identity, groups, messages) [default: the user's data
    /// directory, e.g. ~/.local/share/quicnprotochat].
    #[arg(long, env = "QPC_STATE")]
    pub(crate) state: Option<PathBuf>,
    /// Operator admission token, presented when the server requires one.
    #[arg(long, env = "QPC_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,
    /// Print JSON, one object per line, for scripts (README, "Scripting").
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a client trusts to be its node: one pinned certificate (the default),
/// or a CA bundle and the node's name.
#[derive(Args, Debug, Clone)]
pub(crate) struct TrustFlags {
    /// The server certificate to trust (exactly this one; PEM or DER).
    #[arg(long, env = "QPC_CA_CERT", default_value = "data/server-cert.der")]
    pub(crate) ca_cert: PathBuf,
    /// CA certificates (PEM) to trust instead of pinning one certificate: for a
    /// deployment whose nodes carry certificates from its own CA.
    #[arg(long, env = "QPC_CA_BUNDLE")]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// With --ca-bundle: the name the node's certificate must carry [default:
    /// the host of --server].
    #[arg(long, env = "QPC_SERVER_NAME", requires = "ca_bundle")]
    pub(crate) server_name: Option<String>,
}

/// `server`'s flags (a config file may set the same keys; flags win).
#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// TOML configuration file (see quicnprotochat.example.toml).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7000].
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// The node's certificate (PEM or DER), with --tls-key; nodes of one
    /// deployment share one, so that clients pinning it reach any of them
    /// [default: a self-signed one generated in the data directory].
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Keep the node's tables in this PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB), shared by every node of a deployment
    /// [default: the embedded database in the data directory].
    #[arg(long, env = "QPC_STORE", hide_env_values = true)]
    pub(crate) store: Option<String>,
    /// Most unacknowledged messages per inbox [default: 1000].
    #[arg(long)]
    pub(crate) queue_limit: Option<u64>,
    /// Largest payload in bytes [default: 1048576].
    #[arg(long)]
    pub(crate) max_payload: Option<usize>,
    /// Serve sealed-sender delivery (enqueue without a session, admitted by the
    /// recipient's access key).
    #[arg(long)]
    pub(crate) sealed_sender: bool,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Admission token every client must present [default: none, anyone may
    /// register].
    #[arg(long, env = "QPC_AUTH_TOKEN", hide_env_values = true)]
    pub(crate) auth_token: Option<String>,
    /// Read the admission token from this file (kept out of the process list).
    #[arg(long, conflicts_with = "auth_token")]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// The operator's token for `admin --server` on the running node (at least
    /// 128 bits: see --generate-operator-token) [default: none, admin only on a
    /// stopped node's data].
    #[arg(long, env = "QPC_OPERATOR_TOKEN", hide_env_values = true)]
    pub(crate) operator_token: Option<String>,
    /// Read the operator token from this file (kept out of the process list).
    #[arg(long, conflicts_with = "operator_token")]
    pub(crate) operator_token_file: Option<PathBuf>,
    /// Print a fresh operator token (256 random bits) and exit.
    #[arg(long)]
    pub(crate) generate_operator_token: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run a server node.
    Server(ServerArgs),
    /// The whole system in one command: an embedded node on a free port with
    /// temporary data, three clients, a group conversation with an invite, a
    /// removal and a self-update; prints the transcript and checks that every
    /// member ends in the same state.
    Demo,
    /// Print a shell completion script (e.g. `quicnprotochat completions bash >
    /// /etc/bash_completion.d/quicnprotochat`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `quicnprotochat man | man -l -`).
    Man,
    /// An operator's commands: on a stopped node's data folder, or with
    /// --server and the node's operator token on a running node.
    Admin {
        /// The node's data folder (a stopped node's).
        #[arg(long, default_value = "data", conflicts_with = "server")]
        data_dir: PathBuf,
        #[command(flatten)]
        remote: AdminRemote,
        #[command(subcommand)]
        command: AdminCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

/// `admin --server`: a running node, reached as a client reaches it.
#[derive(Args, Debug, Clone)]
pub(crate) struct AdminRemote {
    /// A running node to administer (HOST:PORT), instead of --data-dir.
    #[arg(long)]
    pub(crate) server: Option<String>,
    #[command(flatten)]
    pub(crate) trust: TrustFlags,
    /// With --server: the node's operator token (its `operator_token`).
    #[arg(long, env = "QPC_OPERATOR_TOKEN", hide_env_values = true)]
    pub(crate) operator_token: Option<String>,
}

/// `admin` commands.
#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// List the accounts and their devices.
    Accounts,
    /// Delete an account: its login, its devices with their keys and sessions,
    /// and everything queued for them. Its name is free again.
    DeleteAccount {
        /// The account to delete.
        username: String,
    },
    /// Copy the stopped node's database into an empty PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB); then start the nodes with --store.
    /// The data folder is left as it was.
    CopyToPostgres {
        /// The target database (its schema is created if missing).
        url: String,
    },
}

/// The commands that talk to a node as a client.
#[derive(Subcommand)]
pub(crate) enum ClientCommand {
    /// Check that the server is up: prints `ok`, its version and uptime.
    Health {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Measure one round trip to the server.
    Ping {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Show this profile's identity, and once logged in its account.
    Whoami {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Create an account with this profile's identity as its first device.
    /// The password comes from QPC_PASSWORD or a prompt.
    RegisterUser {
        /// The account's name (what others invite).
        #[arg(long)]
        username: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Log in (a new device joins the account). Password: QPC_PASSWORD or a prompt.
    Login {
        /// The account to log in to.
        #[arg(long)]
        username: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Set a new account password (asks for the current one, then the new one
    /// twice, or reads QPC_PASSWORD and QPC_NEW_PASSWORD); every other session
    /// of the account ends.
    ChangePassword {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Revoke this profile's session.
    Logout {
        /// End every session of every device of the account, this one's too
        /// (asks for the account password).
        #[arg(long)]
        everywhere: bool,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Verify a user's published keys, or show this device's KeyPackage count.
    CheckKey {
        /// The user whose keys to verify [default: this device's own count].
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Publish fresh KeyPackages and rotate the last-resort one.
    RefreshKeypackage {
        /// How many one-time KeyPackages to publish.
        #[arg(long, default_value_t = commands::DEFAULT_KEY_PACKAGES)]
        count: usize,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// List this account's devices (this one marked).
    Devices {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Remove another device from this account and from this device's groups; its
    /// sessions end. Asks for the account password (QPC_PASSWORD or a prompt).
    RemoveDevice {
        /// The device's identity key, in hex (as `devices` lists it).
        identity: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Create a group with this device as its only member. New groups use the
    /// post-quantum (X-Wing) MLS ciphersuite.
    CreateGroup {
        /// The group's name in this profile.
        name: String,
        /// Use the classic (X25519) MLS ciphersuite, for interoperability with
        /// other MLS clients; payloads then carry a post-quantum key wrap per
        /// recipient (≈1.2 KB each).
        #[arg(long, conflicts_with = "pq")]
        classic: bool,
        /// The post-quantum suite (the default; kept for older scripts).
        #[arg(long, hide = true)]
        pq: bool,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Add every device of each user to a group.
    Invite {
        /// The group.
        #[arg(long)]
        group: String,
        /// The users to add.
        #[arg(required = true)]
        usernames: Vec<String>,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Accept pending invitations; prints the groups joined.
    Join {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Send a message to every member of a group.
    Send {
        /// The group.
        #[arg(long)]
        group: String,
        /// The message (words are joined with spaces).
        #[arg(required = true)]
        message: Vec<String>,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Print new messages as `[GROUP] SENDER: TEXT`, then exit.
    Recv {
        /// Wait up to this many seconds for something to arrive.
        #[arg(long, default_value_t = 0)]
        wait: u64,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Show a group's messages, received and sent, with their time (UTC).
    History {
        /// The group.
        #[arg(long)]
        group: String,
        /// How many of the newest to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Remove a user's devices from a group.
    Remove {
        /// The group.
        #[arg(long)]
        group: String,
        /// The user to remove.
        username: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Leave a group.
    Leave {
        /// The group.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Refresh this device's keys in a group (post-compromise security).
    Update {
        /// The group.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// List groups with epoch and member count.
    Groups {
        #[command(flatten)]
        c: ClientFlags,
    },
    /// List a group's members.
    Members {
        /// The group.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Chat interactively in a group: lines typed are sent; Ctrl+D exits.
    Chat {
        /// The group.
        #[arg(long)]
        group: String,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Own this profile and serve it to the other commands: one process keeps
    /// the profile open, connected and following its inbox, and answers on the
    /// Unix socket `daemon.sock` in the profile folder (JSON-RPC 2.0, one request
    /// per line: docs/daemon.md). While it runs, `send`, `recv`, `history`,
    /// `groups` and the other profile commands go through it. Ctrl+C stops it.
    Daemon {
        /// Also serve the web UI here (loopback only; port 0 picks a free one).
        #[arg(long)]
        web: Option<SocketAddr>,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Serve a web UI for this profile on a loopback address: sign in, groups,
    /// conversations with history, live updates. Prints the address to open
    /// (it carries the UI's access token); Ctrl+C stops it. The same as
    /// `daemon --web ADDR`: the other commands go through it while it runs.
    Web {
        /// Where to serve the UI (loopback only; port 0 picks a free one).
        #[arg(long, default_value = quicnprotochat_client::web::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[command(flatten)]
        c: ClientFlags,
    },
    /// Against --server: register two throwaway users, create a group, exchange
    /// messages, and print what happened.
    DemoGroup {
        #[command(flatten)]
        c: ClientFlags,
    },
}

impl ClientCommand {
    /// Whether the command prints JSON of its own with `--json` (the others
    /// say `{"ok": true, "message": LINE}`).
    pub(crate) fn speaks_json(&self) -> bool {
        use ClientCommand::*;
        matches!(
            self,
            Recv { .. }
                | Chat { .. }
                | History { .. }
                | Groups { .. }
                | Members { .. }
                | Join { .. }
        )
    }

    /// The connection and profile flags every client command carries.
    pub(crate) fn flags(&self) -> &ClientFlags {
        use ClientCommand::*;
        match self {
            Health { c }
            | Ping { c }
            | Whoami { c }
            | Logout { c, .. }
            | ChangePassword { c }
            | Devices { c }
            | Join { c }
            | Groups { c }
            | DemoGroup { c }
            | RegisterUser { c, .. }
            | Login { c, .. }
            | CheckKey { c, .. }
            | RefreshKeypackage { c, .. }
            | RemoveDevice { c, .. }
            | CreateGroup { c, .. }
            | Invite { c, .. }
            | Send { c, .. }
            | Recv { c, .. }
            | History { c, .. }
            | Remove { c, .. }
            | Leave { c, .. }
            | Update { c, .. }
            | Members { c, .. }
            | Chat { c, .. }
            | Daemon { c, .. }
            | Web { c, .. } => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_argument_of_every_command_has_help() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        for cmd in std::iter::once(&cli).chain(cli.get_subcommands()) {
            if cmd.get_about().is_none() {
                missing.push(format!("{} (about)", cmd.get_name()));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{} {id}", cmd.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "no help: {missing:?}");
    }

    #[test]
    fn the_systemd_unit_starts_the_node_with_flags_it_accepts() {
        let unit = include_str!("../../packaging/quicnprotochat.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("an ExecStart line");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert!(args[0].ends_with("/quicnprotochat"), "{exec}");
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{exec}: {e}"));
        assert!(matches!(cli.command, Command::Server(_)), "{exec}");
    }

    #[test]
    fn each_command_lists_only_its_own_flags() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<String> {
            cli.find_subcommand(name)
                .unwrap()
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        };
        let server = flags("server");
        for client_only in ["server", "ca-cert", "state"] {
            assert!(!server.contains(&client_only.to_string()), "{server:?}");
        }
        assert!(server.contains(&"auth-token".to_string()));
        let send = flags("send");
        for own in ["group", "server", "ca-cert", "state", "auth-token"] {
            assert!(send.contains(&own.to_string()), "{send:?}");
        }
        assert!(!send.contains(&"listen".to_string()));
        assert!(flags("demo").is_empty(), "the demo embeds its node");
    }
}
