//! `quicnprotochat`: parses flags, then runs the node or a client command.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quicnprotochat::client::commands::{self, ClientOptions};
use quicnprotochat::client::group_commands;
use quicnprotochat::config::{FileConfig, ServerConfig};

#[derive(Parser)]
#[command(
    name = "quicnprotochat",
    version,
    about = "End-to-end encrypted group messaging over QUIC"
)]
struct Cli {
    /// Server to connect to (client commands).
    #[arg(
        long,
        global = true,
        env = "QPC_SERVER",
        default_value = "127.0.0.1:7000"
    )]
    server: String,
    /// The server certificate to trust (exactly this one; client commands).
    #[arg(
        long,
        global = true,
        env = "QPC_CA_CERT",
        default_value = "data/server-cert.der"
    )]
    ca_cert: PathBuf,
    /// Client state directory (identity and local data).
    #[arg(long, global = true, env = "QPC_STATE")]
    state: Option<PathBuf>,
    /// Operator admission token: required by a server when set, presented by clients.
    #[arg(long, global = true, env = "QPC_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server node.
    Server {
        /// TOML configuration file (flags override its keys).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7000].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Most unacknowledged messages per inbox [default: 1000].
        #[arg(long)]
        queue_limit: Option<u64>,
        /// Largest payload in bytes [default: 1048576].
        #[arg(long)]
        max_payload: Option<usize>,
        /// Serve sealed-sender delivery (enqueue without a session, admitted by
        /// the recipient's access key).
        #[arg(long)]
        sealed_sender: bool,
        /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Check that the server is up: prints `ok`, its version and uptime.
    Health,
    /// Measure one round trip to the server.
    Ping,
    /// Show this profile's identity, and once logged in its account.
    Whoami,
    /// Create an account with this profile's identity as its first device.
    /// The password comes from QPC_PASSWORD or a prompt.
    RegisterUser {
        #[arg(long)]
        username: String,
    },
    /// Log in (a new device joins the account). Password: QPC_PASSWORD or a prompt.
    Login {
        #[arg(long)]
        username: String,
    },
    /// Revoke this profile's session.
    Logout,
    /// Verify a user's published keys, or show this device's KeyPackage count.
    CheckKey {
        #[arg(long)]
        username: Option<String>,
    },
    /// Publish fresh KeyPackages and rotate the last-resort one.
    RefreshKeypackage {
        #[arg(long, default_value_t = commands::DEFAULT_KEY_PACKAGES)]
        count: usize,
    },
    /// List this account's devices (this one marked).
    Devices,
    /// Remove another device (identity key in hex) from this account and from
    /// this device's groups; its sessions end. Asks for the account password
    /// (QPC_PASSWORD or a prompt).
    RemoveDevice { identity: String },
    /// Create a group with this device as its only member. New groups use the
    /// post-quantum (X-Wing) MLS ciphersuite.
    CreateGroup {
        name: String,
        /// Use the classic (X25519) MLS ciphersuite, for interoperability with
        /// other MLS clients; payloads then carry a post-quantum key wrap per
        /// recipient (≈1.2 KB each).
        #[arg(long, conflicts_with = "pq")]
        classic: bool,
        /// The post-quantum suite (the default; kept for older scripts).
        #[arg(long, hide = true)]
        pq: bool,
    },
    /// Add every device of each user to a group.
    Invite {
        #[arg(long)]
        group: String,
        #[arg(required = true)]
        usernames: Vec<String>,
    },
    /// Accept pending invitations; prints the groups joined.
    Join,
    /// Send a message to every member of a group.
    Send {
        #[arg(long)]
        group: String,
        #[arg(required = true)]
        message: Vec<String>,
    },
    /// Print new messages as `[GROUP] SENDER: TEXT`, then exit.
    Recv {
        /// Wait up to this many seconds for something to arrive.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Remove a user's devices from a group.
    Remove {
        #[arg(long)]
        group: String,
        username: String,
    },
    /// Leave a group.
    Leave {
        #[arg(long)]
        group: String,
    },
    /// Refresh this device's keys in a group (post-compromise security).
    Update {
        #[arg(long)]
        group: String,
    },
    /// List groups with epoch and member count.
    Groups,
    /// List a group's members.
    Members {
        #[arg(long)]
        group: String,
    },
    /// Chat interactively in a group: lines typed are sent; Ctrl+D exits.
    Chat {
        #[arg(long)]
        group: String,
    },
    /// Against --server: register two throwaway users, create a group, exchange
    /// messages, and print what happened.
    DemoGroup,
    /// The whole system in one command: an embedded node on a free port with
    /// temporary data, three clients, a group conversation with an invite, a
    /// removal and a self-update; prints the transcript and checks that every
    /// member ends in the same state.
    Demo,
}

fn default_state_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("quicnprotochat"))
        .unwrap_or_else(|| PathBuf::from(".quicnprotochat"))
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server {
            config,
            listen,
            data_dir,
            queue_limit,
            max_payload,
            sealed_sender,
            metrics_listen,
        } => {
            init_logging("info");
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let flags = FileConfig {
                listen,
                data_dir,
                auth_token: cli.auth_token,
                queue_limit,
                max_payload,
                sealed_sender: sealed_sender.then_some(true),
                metrics_listen,
                ..FileConfig::default()
            };
            let config = ServerConfig::from_settings(file.overridden_by(flags))?;
            runtime.block_on(quicnprotochat::server::run(config, shutdown_signal()))?;
            Ok(())
        }
        command => {
            init_logging("warn");
            let opts = ClientOptions {
                server: cli.server,
                ca_cert: cli.ca_cert,
                state_dir: cli.state.unwrap_or_else(default_state_dir),
                auth_token: cli.auth_token,
            };
            let local = tokio::task::LocalSet::new();
            let line = local.block_on(&runtime, async {
                match command {
                    Command::Health => commands::health(&opts).await,
                    Command::Ping => commands::ping(&opts).await,
                    Command::Whoami => commands::whoami(&opts).await,
                    Command::RegisterUser { username } => {
                        let password = commands::read_password(true)?;
                        commands::register_user(&opts, &username, &password).await
                    }
                    Command::Login { username } => {
                        let password = commands::read_password(false)?;
                        commands::login(&opts, &username, &password).await
                    }
                    Command::Logout => commands::logout(&opts).await,
                    Command::CheckKey { username } => {
                        commands::check_key(&opts, username.as_deref()).await
                    }
                    Command::RefreshKeypackage { count } => {
                        commands::refresh_key_packages(&opts, count).await
                    }
                    Command::Devices => commands::devices(&opts).await,
                    Command::RemoveDevice { identity } => {
                        let password = commands::read_password(false)?;
                        group_commands::remove_device(&opts, &identity, &password).await
                    }
                    Command::CreateGroup { name, classic, .. } => {
                        group_commands::create_group(&opts, &name, !classic).await
                    }
                    Command::Invite { group, usernames } => {
                        group_commands::invite(&opts, &group, &usernames).await
                    }
                    Command::Join => group_commands::join(&opts).await,
                    Command::Send { group, message } => {
                        group_commands::send(&opts, &group, &message.join(" ")).await
                    }
                    Command::Recv { wait } => {
                        group_commands::recv(&opts, Duration::from_secs(wait)).await
                    }
                    Command::Remove { group, username } => {
                        group_commands::remove(&opts, &group, &username).await
                    }
                    Command::Leave { group } => group_commands::leave(&opts, &group).await,
                    Command::Update { group } => group_commands::update(&opts, &group).await,
                    Command::Groups => group_commands::groups(&opts).await,
                    Command::Members { group } => group_commands::members(&opts, &group).await,
                    Command::Chat { group } => group_commands::chat(&opts, &group).await,
                    Command::DemoGroup => quicnprotochat::demo::demo_group(&opts).await,
                    Command::Demo => quicnprotochat::demo::demo().await,
                    Command::Server { .. } => unreachable!("handled above"),
                }
            })?;
            if !line.is_empty() {
                println!("{line}");
            }
            Ok(())
        }
    }
}
