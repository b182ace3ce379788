//! The `failover` binary: parses the command line and dispatches.

use std::{
    io::{IsTerminal as _, stdout},
    path::Path,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser as _;
use failover::{
    cli::{Cli, Command, ControlTarget},
    config::Config,
    control::{
        Request,
        commands::{self, CommandError, StatusOptions},
    },
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!("{}: OK ({} services)", config.display(), cfg.services.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| cfg.log_level.as_str().into()),
                )
                .init();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("failover: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(failover::daemon::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("failover: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            target,
            json,
            watch,
            interval,
            no_rates,
        } => {
            let options = StatusOptions {
                json,
                watch,
                interval,
                rates: !no_rates,
                terminal: stdout().is_terminal(),
            };
            control(&target, async |socket| {
                commands::status(socket, &options, &mut stdout()).await
            })
        }
        Command::Events {
            target,
            limit,
            json,
        } => control(&target, async |socket| {
            commands::events(socket, limit, json, &mut stdout()).await
        }),
        Command::Drain {
            target,
            service,
            backend,
        } => act(&target, &Request::Drain { service, backend }),
        Command::Disable {
            target,
            service,
            backend,
        } => act(&target, &Request::Disable { service, backend }),
        Command::Enable {
            target,
            service,
            backend,
        } => act(&target, &Request::Enable { service, backend }),
        Command::Failback { target, service } => act(&target, &Request::Failback { service }),
        Command::Reload { target } => act(&target, &Request::Reload),
        Command::Explain {
            target,
            service,
            client,
            json,
        } => control(&target, async |socket| {
            commands::explain(socket, &service, client, json, &mut stdout()).await
        }),
    }
}

/// `drain`, `disable`, `enable`, `failback`, `reload`.
fn act(target: &ControlTarget, request: &Request) -> ExitCode {
    control(target, async |socket| {
        commands::act(socket, request, &mut stdout()).await
    })
}

/// Runs a control command against the daemon `target` names: exit 0 on success, 1 when
/// the daemon cannot be asked or answers with an error, 2 when `--config` is unreadable.
fn control(
    target: &ControlTarget,
    command: impl AsyncFnOnce(&Path) -> Result<(), CommandError>,
) -> ExitCode {
    let socket = match target
        .socket_path()
        .context("reading the control socket's path from --config")
    {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("failover: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("failover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(&socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
