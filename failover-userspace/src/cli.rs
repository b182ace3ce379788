//! The command line of the `failover` binary.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Config, ConfigError, parse_duration},
    control::DEFAULT_SOCKET,
};

/// failover: an XDP L4 load balancer with fast, safe failover.
#[derive(Debug, Parser)]
#[command(name = "failover", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts).
    Run {
        /// The config file.
        #[arg(long, short, default_value = "/etc/failover/failover.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exits 0, or prints every error and exits 2.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "/etc/failover/failover.toml")]
        config: PathBuf,
    },
    /// Show every service and backend: state, since when and why, tier, weight, rates.
    ///
    /// Rates (PKT/s, BYTES/s, FLOWS/s) come from two samples taken --interval apart
    /// (500ms unless given). WEIGHT is the configured weight, with the weight in the
    /// current Maglev table in parentheses when that differs ("(-)": not in the table).
    Status {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// Print the status as JSON (one sample, cumulative counters, no rates): the
        /// stable, documented format for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh every --interval until Ctrl-C (snapshots separated by blank lines when
        /// the output is not a terminal).
        #[arg(long)]
        watch: bool,
        /// With --watch, time between refreshes (default 1s); without, time between the
        /// two samples the rates come from (default 500ms).
        #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
        interval: Option<Duration>,
        /// Take a single sample and show no rates.
        #[arg(long)]
        no_rates: bool,
    },
    /// Show recent backend state changes and service selections, oldest first.
    Events {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// Only the newest N events.
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
        /// Print the events as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stop giving a backend new flows; its existing flows stay on it.
    Drain {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// The service, as named in the config.
        service: String,
        /// The backend, as named in the config.
        backend: String,
    },
    /// Take a backend out of service: no new flows, existing flows move as the service's
    /// `existing_flows` policy says.
    Disable {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// The service, as named in the config.
        service: String,
        /// The backend, as named in the config.
        backend: String,
    },
    /// Undo `drain` or `disable`: health checks decide again.
    Enable {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// The service, as named in the config.
        service: String,
        /// The backend, as named in the config.
        backend: String,
    },
    /// Move a service back to its preferred tier now.
    Failback {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// The service, as named in the config.
        service: String,
    },
    /// Re-read the daemon's config file and apply the changes (a bad file is rejected and
    /// the running config stays).
    Reload {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Show which backend a client's packets to a service go to, and why.
    Explain {
        /// Where the daemon listens.
        #[command(flatten)]
        target: ControlTarget,
        /// The service, as named in the config.
        service: String,
        /// The client's address and source port: `203.0.113.5:40000` or
        /// `[2001:db8::5]:40000`.
        #[arg(value_name = "CLIENT_IP:PORT")]
        client: SocketAddr,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where a control command finds the daemon: `--socket`, or the `control_socket` of the
/// config file given with `--config`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ControlTarget {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Use the control_socket of this config file instead of --socket.
    #[arg(long, short, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
}

impl ControlTarget {
    /// The socket path: the config file's `control_socket` if `--config` was given, else
    /// `--socket`.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of a config file that cannot be loaded.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.config {
            Some(file) => Ok(Config::load(file)?.control_socket),
            None => Ok(self.socket.clone()),
        }
    }

    /// A target for the socket at `path`.
    pub fn socket(path: impl AsRef<Path>) -> Self {
        Self {
            socket: path.as_ref().to_path_buf(),
            config: None,
        }
    }
}

/// Parses `--interval`: a duration as in the config file (`1s`, `250ms`), more than zero.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err("the interval must be more than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("failover").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    #[test]
    fn control_commands_parse() {
        match parse(&["status", "--watch", "--interval", "2s"]).unwrap() {
            Command::Status {
                target,
                json: false,
                watch: true,
                interval,
                no_rates: false,
            } => {
                assert_eq!(target, ControlTarget::socket(DEFAULT_SOCKET));
                assert_eq!(interval, Some(Duration::from_secs(2)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["drain", "web", "web-2", "--socket", "/tmp/s.sock"]).unwrap() {
            Command::Drain {
                target,
                service,
                backend,
            } => {
                assert_eq!(target, ControlTarget::socket("/tmp/s.sock"));
                assert_eq!((service.as_str(), backend.as_str()), ("web", "web-2"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["explain", "web", "[2001:db8::5]:40000", "-c", "/etc/f.toml"]).unwrap() {
            Command::Explain { target, client, .. } => {
                assert_eq!(target.config, Some(PathBuf::from("/etc/f.toml")));
                assert_eq!(client, "[2001:db8::5]:40000".parse().unwrap());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["events", "-n", "5"]).unwrap(),
            Command::Events { limit: Some(5), .. }
        ));
    }

    #[test]
    fn bad_control_arguments_are_rejected() {
        for args in [
            &["status", "--interval", "0s"][..],
            &["status", "--interval", "fast"],
            &["explain", "web", "203.0.113.5"],
            &["drain", "web"],
            &["reload", "--socket", "/a", "--config", "/b"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn run_and_check_are_unchanged() {
        assert!(matches!(
            parse(&["run"]).unwrap(),
            Command::Run { config } if config == Path::new("/etc/failover/failover.toml")
        ));
        assert!(matches!(
            parse(&["check", "-c", "x.toml"]).unwrap(),
            Command::Check { config } if config == Path::new("x.toml")
        ));
    }
}
