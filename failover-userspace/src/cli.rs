//! The command line of the `failover` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
}
