//! `quicnprotochat`: parses flags, then runs the node or a client command.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use cli::{AdminCommand, AdminRemote, Cli, ClientCommand, Command, ServerArgs};
use quicnprotochat::config::{FileConfig, ServerConfig};
use quicnprotochat_client::commands::{self, ClientOptions};
use quicnprotochat_client::group_commands;
use quicnprotochat_client::shutdown::Shutdown;

mod cli;

/// The node allocates and frees small buffers at a high rate on several threads
/// (Cap'n Proto messages, QUIC frames, redb pages); under `loadtest enqueue`
/// glibc's malloc spent a fifth of the RPC threads' time consolidating and
/// unlinking chunks (docs/performance.md, the enqueue profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(&runtime, cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Not a plain drop: that waits for every blocking task, and `chat`'s read
    // of stdin is one that ends only with the next line typed.
    runtime.shutdown_timeout(Duration::from_millis(250));
    code
}

fn run(runtime: &tokio::runtime::Runtime, cli: Cli) -> anyhow::Result<ExitCode> {
    let client = match cli.command {
        Command::Server(args) => return serve(runtime, args).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "quicnprotochat", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Admin {
            remote:
                AdminRemote {
                    server: Some(server),
                    trust,
                    operator_token,
                },
            command,
            ..
        } => {
            init_logging("warn");
            let opts = ClientOptions {
                server,
                ca_cert: trust.ca_cert,
                ca_bundle: trust.ca_bundle,
                server_name: trust.server_name,
                state_dir: PathBuf::new(),
                auth_token: None,
                json: false,
            };
            let local = tokio::task::LocalSet::new();
            let result = local.block_on(runtime, async {
                let token = operator_token.ok_or_else(|| {
                    commands::CommandError::Invalid(
                        "admin --server needs the node's operator token (--operator-token or QPC_OPERATOR_TOKEN)"
                            .into(),
                    )
                })?;
                match command {
                    AdminCommand::Accounts => {
                        quicnprotochat::admin::accounts_remote(&opts, &token).await
                    }
                    AdminCommand::DeleteAccount { username } => {
                        quicnprotochat::admin::delete_account_remote(&opts, &token, &username)
                            .await
                    }
                    AdminCommand::CopyToPostgres { .. } => Err(commands::CommandError::Invalid(
                        "copy-to-postgres works on a stopped node's data folder (--data-dir), not over --server"
                            .into(),
                    )),
                }
            });
            return Ok(report(result, false, false));
        }
        Command::Admin {
            data_dir, command, ..
        } => {
            let line = match command {
                AdminCommand::Accounts => quicnprotochat::admin::accounts(&data_dir)?,
                AdminCommand::DeleteAccount { username } => {
                    quicnprotochat::admin::delete_account(&data_dir, &username)?
                }
                AdminCommand::CopyToPostgres { url } => {
                    runtime.block_on(quicnprotochat::admin::copy_to_postgres(&data_dir, &url))?
                }
            };
            println!("{line}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Demo => {
            init_logging("warn");
            let local = tokio::task::LocalSet::new();
            let line = local.block_on(runtime, quicnprotochat::demo::demo())?;
            if !line.is_empty() {
                println!("{line}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Client(client) => client,
    };
    init_logging("warn");
    let flags = client.flags().clone();
    let opts = ClientOptions {
        server: flags.server,
        ca_cert: flags.trust.ca_cert,
        ca_bundle: flags.trust.ca_bundle,
        server_name: flags.trust.server_name,
        state_dir: flags.state.unwrap_or_else(default_state_dir),
        auth_token: flags.auth_token,
        json: flags.json,
    };
    let speaks_json = client.speaks_json();
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(runtime, async {
        use ClientCommand::*;
        use quicnprotochat_client::account_command::AccountCommand as A;
        use quicnprotochat_client::daemon::chat::chat as daemon_chat;
        use quicnprotochat_client::daemon::client::account_command;
        use quicnprotochat_client::daemon::client::{
            DaemonClient, recv_through_daemon_or as recv_via_daemon,
            run_profile_command as profile, sign_in_through_daemon_or,
            through_daemon_or as via_daemon,
        };
        use quicnprotochat_client::profile_command::ProfileCommand as P;
        match client {
            Health { .. } => commands::health(&opts).await,
            Ping { .. } => commands::ping(&opts).await,
            Whoami { .. } => via_daemon(&opts, P::Whoami, commands::whoami(&opts)).await,
            RegisterUser { username, .. } => {
                let password = commands::read_password(true)?;
                let local = commands::register_user(&opts, &username, &password);
                sign_in_through_daemon_or(&opts, &username, &password, true, local).await
            }
            Login { username, .. } => {
                let password = commands::read_password(false)?;
                let local = commands::login(&opts, &username, &password);
                sign_in_through_daemon_or(&opts, &username, &password, false, local).await
            }
            ChangePassword { .. } => {
                let current = commands::read_password(false)?;
                let new = commands::read_new_password()?;
                account_command(&opts, A::ChangePassword { current, new }).await
            }
            Logout { everywhere, .. } => {
                let password = match everywhere {
                    true => Some(commands::read_password(false)?),
                    false => None,
                };
                account_command(
                    &opts,
                    A::Logout {
                        everywhere,
                        password,
                    },
                )
                .await
            }
            CheckKey { username, .. } => account_command(&opts, A::CheckKey { username }).await,
            RefreshKeypackage { count, .. } => {
                let local = commands::refresh_key_packages(&opts, count);
                via_daemon(&opts, P::RefreshKeypackage { count }, local).await
            }
            Devices { .. } => via_daemon(&opts, P::Devices, commands::devices(&opts)).await,
            RemoveDevice { identity, .. } => {
                let password = commands::read_password(false)?;
                account_command(&opts, A::RemoveDevice { identity, password }).await
            }
            CreateGroup { name, classic, .. } => {
                profile(&opts, P::CreateGroup { name, classic }).await
            }
            Invite {
                group, usernames, ..
            } => profile(&opts, P::Invite { group, usernames }).await,
            Join { .. } => profile(&opts, P::Join).await,
            Send { group, message, .. } => {
                let message = message.join(" ");
                profile(&opts, P::Send { group, message }).await
            }
            Recv { wait, .. } => {
                let shutdown = on_signals("recv")?;
                let local = group_commands::recv(&opts, Duration::from_secs(wait), &shutdown);
                recv_via_daemon(&opts, wait, local).await
            }
            History { group, limit, .. } => profile(&opts, P::History { group, limit }).await,
            Remove {
                group, username, ..
            } => profile(&opts, P::Remove { group, username }).await,
            Leave { group, .. } => profile(&opts, P::Leave { group }).await,
            Update { group, .. } => profile(&opts, P::Update { group }).await,
            Groups { .. } => profile(&opts, P::Groups).await,
            Members { group, .. } => profile(&opts, P::Members { group }).await,
            Chat { group, .. } => {
                let shutdown = on_signals("chat")?;
                match DaemonClient::connect(&opts.state_dir).await {
                    Some(daemon) => daemon_chat(&opts, &group, &shutdown, daemon).await,
                    None => group_commands::chat(&opts, &group, &shutdown).await,
                }
            }
            DemoGroup { .. } => quicnprotochat::demo::demo_group(&opts).await,
            Daemon { web, .. } => daemon(&opts, web).await,
            Web { listen, .. } => daemon(&opts, Some(listen)).await,
        }
    });
    Ok(report(result, opts.json, speaks_json))
}

/// Prints what a client command did, or why it failed, and gives the exit
/// status (README, "Exit status"). With `--json`, a command without JSON
/// output of its own says `{"ok": true, "message": …}` and a failure is JSON on
/// stderr.
fn report(
    result: Result<String, commands::CommandError>,
    json: bool,
    speaks_json: bool,
) -> ExitCode {
    use quicnprotochat_client::output;
    match result {
        Ok(line) if json && !speaks_json => println!("{}", output::done_json(&line)),
        Ok(line) if !line.is_empty() => println!("{line}"),
        Ok(_) => {}
        Err(e) => {
            if json {
                eprintln!("{}", output::error_json(&e));
            } else {
                eprintln!("error: {e}");
            }
            return ExitCode::from(e.exit_code());
        }
    }
    ExitCode::SUCCESS
}

/// The stop signals of a long-running client command (`quicnprotochat_client::shutdown`).
fn on_signals(what: &'static str) -> Result<Shutdown, commands::CommandError> {
    Shutdown::on_signals(what).map_err(|e| {
        commands::CommandError::Invalid(format!("cannot install the signal handlers: {e}"))
    })
}

/// `daemon [--web ADDR]` (and `web`): takes the profile and its socket, binds
/// the web UI if asked, says where each is, serves until a signal.
async fn daemon(
    opts: &ClientOptions,
    web: Option<std::net::SocketAddr>,
) -> Result<String, commands::CommandError> {
    use quicnprotochat_client::{daemon, web as web_ui};
    use std::io::Write;
    let invalid = |e: &dyn std::fmt::Display| commands::CommandError::Invalid(e.to_string());
    let socket = daemon::bind(&opts.state_dir).map_err(|e| match e {
        daemon::DaemonError::Profile(state) => commands::CommandError::State(state),
        other => invalid(&other),
    })?;
    let web = match web {
        None => None,
        Some(addr) => {
            let listener = web_ui::bind(addr).await.map_err(|e| invalid(&e))?;
            let token = web_ui::new_access_token();
            Some(daemon::WebFront { listener, token })
        }
    };
    // Before the addresses are printed: from then on a signal stops gracefully.
    let shutdown = on_signals(if web.is_some() { "web" } else { "daemon" })?;
    let mut out = std::io::stdout().lock();
    // The page's address first: it is what `web` is run for.
    if let Some(front) = &web {
        let addr = front.listener.local_addr().map_err(|e| invalid(&e))?;
        // The address carries the token: it goes to the user's terminal,
        // never to the log.
        let _ = writeln!(out, "web UI at {}", web_ui::page_url(addr, &front.token));
    }
    let _ = writeln!(
        out,
        "daemon serving {} (pid {})",
        socket.path().display(),
        std::process::id()
    );
    let _ = out.flush();
    drop(out);
    daemon::run(socket, opts.clone(), web, shutdown.requested())
        .await
        .map_err(|e| invalid(&e))?;
    Ok(String::new())
}

/// `server`: the file's settings under the flags', then the node until a signal.
fn serve(runtime: &tokio::runtime::Runtime, args: ServerArgs) -> anyhow::Result<()> {
    if args.generate_operator_token {
        println!("{}", quicnprotochat::tokens::generate_operator_token());
        return Ok(());
    }
    init_logging("info");
    let from_file = |path: &Option<std::path::PathBuf>| {
        path.as_deref()
            .map(quicnprotochat::tokens::read_token_file)
            .transpose()
    };
    let auth_token = from_file(&args.auth_token_file)?.or(args.auth_token);
    let operator_token = from_file(&args.operator_token_file)?.or(args.operator_token);
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        store: args.store,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        auth_token,
        operator_token,
        queue_limit: args.queue_limit,
        max_payload: args.max_payload,
        sealed_sender: args.sealed_sender.then_some(true),
        metrics_listen: args.metrics_listen,
        ..FileConfig::default()
    };
    let config = ServerConfig::from_settings(file.overridden_by(flags))?;
    runtime.block_on(async {
        let shutdown = Shutdown::on_signals("server")?;
        quicnprotochat::server::run(config, shutdown.requested()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
